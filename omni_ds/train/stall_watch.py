"""Stalls end the job: heartbeats over the rendezvous store, read by every rank.

A rank whose process stops (SIGSTOP, a frozen host, a GIL held for minutes) does not fail its
collectives; its peers wait in them. Gloo, and NCCL without its watchdog, can wait far past the
process group's timeout (a peer stopped with SIGSTOP keeps its sockets open). So each rank runs a
thread that, every `interval` seconds, bumps its own counter in the store (MASTER_ADDR:MASTER_PORT,
through its own client with short timeouts) and reads everyone's. A peer whose counter has not
moved for `dist_timeout_minutes` (timed on this rank's clock: no clock is compared across hosts)
has stopped answering; so has rank 0, which hosts the store, when the store stops answering. The
watching rank then prints one line naming the silent ranks and the last checkpoint, SIGKILLs the
silent ranks that run on its own host (a stopped process ignores the launcher's SIGTERM), and
exits with code 3; the deepspeed launcher then ends the rest of the job.

A slow step is not a stall: heartbeats run beside the training thread. A rank that finished
stops its thread first (stop()), so peers do not read its exit as a stall.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, Optional

EXIT_STALLED = 3
_KEY = "omni_ds/heartbeat/{}"


class StallWatch:
    def __init__(self, rank: int, world: int, timeout_s: float, last_checkpoint: Callable[[], object]):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.interval = min(max(timeout_s / 10, 0.5), 10.0)
        self.last_checkpoint = last_checkpoint
        self.host = socket.gethostname()
        self._beats = 0
        self._seen: dict[int, tuple[bytes, float]] = {}     # rank -> (its last value, when it changed here)
        self._store_ok = time.monotonic()
        self._stop = threading.Event()
        self._store = self._connect()
        self._store.set(_KEY.format(rank), self._value())      # before any peer reads it (see start_stall_watch)
        self._thread = threading.Thread(target=self._run, name="omni_ds-stall-watch", daemon=True)

    def _connect(self):
        import torch.distributed as dist
        return dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 29500)),
                             is_master=False, timeout=timedelta(seconds=max(2 * self.interval, 2.0)),
                             wait_for_workers=False)

    def _value(self) -> str:
        self._beats += 1
        return f"{self._beats} {self.host} {os.getpid()}"

    def start(self) -> "StallWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            silent = self.silent_ranks()
            if silent and not self._stop.is_set():
                self._end_job(silent)

    def silent_ranks(self) -> dict[int, float]:
        """Ranks not heard from for the timeout -> seconds since they last were."""
        now = time.monotonic()
        try:
            self._store.set(_KEY.format(self.rank), self._value())
            values = self._store.multi_get([_KEY.format(r) for r in range(self.world)])
        except Exception:                          # the store (rank 0's process) does not answer
            quiet = now - self._store_ok
            return {0: quiet} if quiet > self.timeout_s and self.rank != 0 else {}
        self._store_ok = now
        silent = {}
        for r, value in enumerate(values):
            last, since = self._seen.get(r, (None, now))
            if value != last:
                self._seen[r] = (value, now)
            elif r != self.rank and now - since > self.timeout_s:
                silent[r] = now - since
        return silent

    def _end_job(self, silent: dict[int, float]) -> None:
        try:
            latest = self.last_checkpoint()
        except Exception:                          # a broken `latest` must not hide the stall
            latest = None
        names = ", ".join(f"rank {r} (silent {s:.0f} s{', the rendezvous store host' if r == 0 else ''})"
                          for r, s in sorted(silent.items()))
        resume = (f"the last checkpoint is {latest}: rerun to resume from it" if latest else
                  "no checkpoint was saved yet")
        print(f"[omni_ds rank {self.rank}] ERROR: {names} stopped answering for longer than "
              f"dist_timeout_minutes = {self.timeout_s / 60:g}: ending the job (exit {EXIT_STALLED}); {resume}.",
              file=sys.stderr, flush=True)
        for r in silent:
            self._kill_if_local(r)
        os._exit(EXIT_STALLED)

    def _kill_if_local(self, rank: int) -> None:
        """SIGKILL a silent rank running on this host (the pid its last heartbeat gave)."""
        value = self._seen.get(rank, (None, 0))[0]
        try:
            _, host, pid = value.decode().split()
            if host == self.host:
                os.kill(int(pid), signal.SIGKILL)
        except (AttributeError, ValueError, OSError):
            pass


def start_stall_watch(rank: int, world: int, timeout_minutes: float,
                      last_checkpoint: Callable[[], object]) -> Optional[StallWatch]:
    """The watch of a multi-rank run (none for one rank: nobody to wait for)."""
    import torch.distributed as dist
    if world < 2:
        return None
    watch = StallWatch(rank, world, timeout_minutes * 60, last_checkpoint)
    dist.barrier()                                 # every rank's first heartbeat is in the store
    return watch.start()
