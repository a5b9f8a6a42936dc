"""One stack per home folder: an exclusive lock, taken before anything else runs.

Two runtimes on one home would run the same jobs twice in one folder and overwrite each other's
state. ``flock`` is released by the kernel when its holder dies, so a killed stack never leaves a
stale lock behind; the file records who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class HomeBusyError(Exception):
    """Another stack holds this home folder."""


class HomeLock:
    def __init__(self, home: Path):
        self.path = home / "droptrain.lock"
        self._fd: int | None = None

    def acquire(self) -> HomeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HomeBusyError(
                f"{self.path.parent} is in use by another droptrain (pid {holder}): "
                "stop it first, or give this one another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
