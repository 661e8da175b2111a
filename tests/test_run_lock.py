"""One run per output_dir: a second run is refused naming the holder; a dead holder's lock is
taken over with a notice; the dry run says so too."""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys

import pytest

from omni_ds.train.recipe import REPO, main
from omni_ds.train.run_lock import LOCK_NAME, RunLocked, acquire, held_by_other, release


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _hold(out, pid, host=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))


def test_acquire_release_and_refusal(tmp_path):
    lock = acquire(str(tmp_path / "run"))
    assert json.loads(lock.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    release(lock)
    assert not lock.exists()
    _hold(tmp_path / "run", 1)                        # pid 1 is alive: another run holds it
    with pytest.raises(RunLocked, match=r"in use by another run \(pid 1 on "):
        acquire(str(tmp_path / "run"))
    release(tmp_path / "run" / LOCK_NAME)             # not ours: left alone
    assert (tmp_path / "run" / LOCK_NAME).exists()


def test_a_dead_holder_is_taken_over_with_a_notice(tmp_path):
    _hold(tmp_path / "run", _dead_pid())
    said = []
    lock = acquire(str(tmp_path / "run"), log=said.append)
    assert json.loads(lock.read_text())["pid"] == os.getpid() and "taking it over" in said[0]


def test_a_lock_of_another_host_is_refused(tmp_path):
    _hold(tmp_path / "run", _dead_pid(), host="elsewhere")
    with pytest.raises(RunLocked, match="on elsewhere"):
        acquire(str(tmp_path / "run"))


def test_second_run_is_refused_in_one_line_and_the_dry_run_says_so(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"stage": 1, "whisper_path": "w", "llm_path": "l", "train_manifest": "t.jsonl",
                               "output_dir": str(tmp_path / "run")}))
    _hold(tmp_path / "run", 1)
    ds = str(REPO / "ds_configs" / "zero2.json")
    assert main(["--config", str(cfg), "--ds", ds], stage=1) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by another run (pid 1" in err and "Traceback" not in err
    assert held_by_other(str(tmp_path / "run")).startswith("pid 1 on ")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["--config", str(cfg), "--ds", ds, "--dry-run"], stage=1)
    assert "ERROR output_dir" in buf.getvalue() and "in use by another run (pid 1" in buf.getvalue()
