"""Helpers for tests that start real DeepSpeed launches (shared by the multi-process tests)."""
import contextlib
import importlib.util
import os
import socket
import sys
from pathlib import Path

DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """tools/<name>.py as a module (the tools are scripts, not a package), to call its main()."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    """A free rendezvous port: a stale process may hold DeepSpeed's default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env() -> dict:
    """This environment, offline, without the rank variables of any enclosing launch."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_SIZE"):
        env.pop(k, None)
    return env


@contextlib.contextmanager
def single_rank_process_group():
    """This process as rank 0 of a 1-rank job (what the launcher's env would say), for Trainers
    built in the test process; afterwards the group is shut down (via deepspeed.comm, so the next
    in-process run starts clean) and the environment restored."""
    from omni_ds.train.recipe import shutdown_distributed
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_SIZE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        shutdown_distributed()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
