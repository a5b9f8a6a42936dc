"""One stack per home folder: an exclusive lock, taken before anything else runs.

Two runtimes on one home would run the same jobs twice in one folder and overwrite each other's
state. ``flock`` is released by the kernel when the last descriptor of its open file closes, so a
killed stack never leaves a stale lock behind; the file records who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import psutil


class HomeBusyError(Exception):
    """Another stack holds this home folder."""


class HomeLock:
    def __init__(self, home: Path, linger_seconds: float = 10.0):
        self.path = home / "droptrain.lock"
        # A killed stack's lock outlives it while a child it was forking still holds a copy of its
        # descriptors (until that child's exec closes them): a moment, waited for, not a refusal.
        self.linger_seconds = linger_seconds
        self._fd: int | None = None

    def acquire(self) -> HomeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.linger_seconds
        while not _try_lock(fd):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            if _running(holder) or time.monotonic() >= deadline:
                os.close(fd)
                raise HomeBusyError(self._busy(holder)) from None
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def _busy(self, holder: str) -> str:
        if _running(holder):
            return (
                f"{self.path.parent} is in use by another droptrain (pid {holder}): "
                "stop it first, or give this one another --home"
            )
        # The stack that took the lock has ended; what holds it now is a process it left.
        others = ", ".join(f"{p.pid} ({' '.join(p.cmdline())[:80]})" for p in _holding(self.path)) or "unknown"
        return (
            f"{self.path.parent} is locked by processes a droptrain (pid {holder or '?'}) left running when it "
            f"ended: {others}; end them, or give this one another --home"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _running(pid: str) -> bool:
    """Whether the process the lock file names still runs (a zombie has closed its files)."""
    try:
        return pid.isdigit() and psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _holding(path: Path) -> list[psutil.Process]:
    """The processes with ``path`` open: only asked when the refusal must name them."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and any(f.path == str(path) for f in process.open_files()):
                found.append(process)
        except psutil.Error:
            continue
    return found
