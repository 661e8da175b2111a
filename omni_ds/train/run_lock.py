"""One run per output_dir: a lock file naming the holder's host and PID.

Two runs on one output_dir would write the same checkpoints and `latest`, and each would resume
from the other's steps. The launcher's rank 0 takes `output_dir/.omni_ds.lock` before anything
else starts (the other ranks and nodes share that folder); a second run is refused with the
holder's host and PID. A lock whose PID is no longer alive on this host (a run that was killed)
is taken over with a notice; one held on another host is refused, since its PID cannot be checked.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Optional

LOCK_NAME = ".omni_ds.lock"


class RunLocked(RuntimeError):
    """Another run holds the output_dir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def held_by_other(output_dir: str) -> Optional[str]:
    """Who holds output_dir's lock, when that is another live run (or another host); else None."""
    holder = _read(Path(output_dir) / LOCK_NAME)
    if not holder:
        return None
    if holder.get("host") == socket.gethostname() and (holder.get("pid") == os.getpid() or
                                                        not _alive(int(holder.get("pid", 0) or 0))):
        return None
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def acquire(output_dir: str, log=print) -> Path:
    """Take the lock (atomically: O_EXCL), or raise RunLocked naming the holder."""
    path = Path(output_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path) or {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _alive(holder["pid"]):
                log(f"notice: {path} was left by a run that is gone (pid {holder['pid']} on {holder['host']}); "
                    "taking it over")
                path.unlink(missing_ok=True)
                continue
            raise RunLocked(f"output_dir {output_dir} is in use by another run (pid {holder.get('pid', '?')} "
                            f"on {holder.get('host', '?')}, lock {path}); wait for it, choose another "
                            "output_dir, or delete the lock if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunLocked(f"{path}: could not take the lock")


def release(path: Optional[Path]) -> None:
    """Drop the lock if this process holds it."""
    if path is not None and (_read(path) or {}).get("pid") == os.getpid():
        path.unlink(missing_ok=True)
