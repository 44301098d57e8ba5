"""The exclusive lock a run holds on its output folder (rank 0 holds it for all ranks).

``DIR/.igcam-explain.lock`` is locked with flock (the ``filelock`` package): the kernel releases
it when the holder exits in any way, SIGKILL included, so a killed run never leaves a lock that
blocks the next one. ``DIR/.igcam-explain.owner`` names the holder (pid, host, start time) for
the refusal message; finding it at acquisition means the previous holder did not end cleanly
(a stale lock), which is reported and taken over.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from igcam_fast import results as rio

from .options import ExplainError


def _describe(owner: dict | None) -> str:
    if not owner:
        return "a process that did not record itself"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"


class OutputLock:
    """Exclusive, non-blocking lock of an output folder; a second holder is refused with ExplainError."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._lock = None

    def _read_owner(self) -> dict | None:
        try:
            owner = json.loads((self.out / rio.OWNER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock of a killed run was taken over."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.out / rio.LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ExplainError(f"--out {self.out} is in use by another explain run ({_describe(self._read_owner())}); "
                               "wait for it to finish, or choose another --out") from None
        except OSError as err:
            raise ExplainError(f"--out {self.out}: cannot lock {rio.LOCK_FILE} ({err})") from None
        self._lock = lock
        try:
            stale = self._read_owner()
            rio.atomic_write_json(self.out / rio.OWNER_FILE, dict(
                pid=os.getpid(), host=socket.gethostname(), argv=sys.argv,
                started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")))
        except BaseException:
            self.release()
            raise
        if stale is not None:
            return (f"the previous run on {self.out} ({_describe(stale)}) ended without releasing its lock "
                    "(killed?); the stale lock was taken over")
        return None

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            (self.out / rio.OWNER_FILE).unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None
