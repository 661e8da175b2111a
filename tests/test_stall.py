"""A rank that stops answering ends the whole job within dist_timeout_minutes, naming the rank:
a real 2-rank stage-1 launch under the deepspeed launcher, rank 1 frozen with SIGSTOP mid-run
(its sockets stay open, so gloo alone waits on). The job must end with exit 3 from the watch,
the message naming rank 1, and no process of the job left behind."""
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from omni_ds.train.demo import demo_stage1_config, write_tiny_setup
from launcher import DEEPSPEED, free_port, launcher_env

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MIN = 0.25                      # 15 s of silence ends the job


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        if f"--local_rank={rank}" in " ".join(child.cmdline()):
            return child
    raise AssertionError(f"no rank {rank} process under the launcher")


def _wait_for_steps(out: Path, steps: int, launcher: subprocess.Popen, limit_s: float = 300) -> None:
    metrics, t0 = out / "metrics.jsonl", time.time()
    while time.time() - t0 < limit_s and launcher.poll() is None:
        if metrics.is_file() and sum(1 for _ in open(metrics)) >= steps:
            return
        time.sleep(0.5)
    raise AssertionError(f"the run did not reach step {steps} (rc {launcher.poll()})")


def test_a_stopped_rank_ends_the_job_within_the_timeout_naming_it(tmp_path):
    data = write_tiny_setup(tmp_path / "data", n_clips=4, val_clips=2)
    cfg = demo_stage1_config(data, output_dir=str(tmp_path / "out"), per_device_train_batch_size=1,
                             global_batch_size=2, max_steps=100000, save_steps=0, logging_steps=1,
                             report_to=[], progress_bar=False, val_manifest=None, dist_timeout_minutes=TIMEOUT_MIN)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "launch/stage1.py",
           "--config", str(tmp_path / "cfg.json"), "--ds", "ds_configs/zero2.json"]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=launcher_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    job = []
    try:
        _wait_for_steps(tmp_path / "out", 3, launcher)
        job = [psutil.Process(launcher.pid)] + psutil.Process(launcher.pid).children(recursive=True)
        frozen = _rank_process(launcher, 1)
        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        log = launcher.communicate(timeout=TIMEOUT_MIN * 60 + 60)[0]
        took = time.time() - stopped_at
    finally:
        for p in job:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "rank 1 (silent" in log and "stopped answering for longer than dist_timeout_minutes = 0.25" in log, log[-3000:]
    # the watch on rank 0 exits 3 after killing rank 1; the launcher reports whichever it polls first
    assert "[omni_ds rank 0] ERROR" in log and ("return code = 3" in log or "return code = -9" in log), log[-3000:]
    # detected after 15 s of silence (+ one heartbeat interval), then the launcher's own shutdown
    assert took < TIMEOUT_MIN * 60 + 15, took
    assert not [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
