"""Helpers for tests that start real DeepSpeed launches (shared by the multi-process tests)."""
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
