"""The home's lock when the stack that held it is gone but a process it forked still holds a copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from droptrain.local.lock import HomeBusyError, HomeLock
from helpers import DEADLINE

ROOT = Path(__file__).resolve().parents[2]

# Takes the lock, forks a child that keeps the descriptor (as a fork not yet exec'd does) for argv[2]
# seconds, and ends at once: the lock outlives the stack that took it.
_HOLDER = """
import os, sys, time
from pathlib import Path
from droptrain.local.lock import HomeLock
HomeLock(Path(sys.argv[1])).acquire()
if os.fork() == 0:
    print(os.getpid(), flush=True)
    time.sleep(float(sys.argv[2]))
os._exit(0)
"""


def _leave_a_child_holding(home: Path, seconds: float) -> int:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(home), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE
    )
    child = int(holder.stdout.readline())
    assert holder.wait(DEADLINE) == 0
    return child


def test_a_lock_left_by_an_ended_stacks_child_is_waited_for_then_taken(tmp_path):
    child = _leave_a_child_holding(tmp_path, 1.0)
    lock = HomeLock(tmp_path, linger_seconds=DEADLINE).acquire()
    try:
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        assert (tmp_path / "droptrain.lock").read_text() == str(os.getpid()), "the file names its new holder"
    finally:
        lock.release()


def test_a_child_that_keeps_the_lock_is_named_in_the_refusal(tmp_path):
    child = _leave_a_child_holding(tmp_path, DEADLINE)
    try:
        with pytest.raises(HomeBusyError, match=f"left running when it ended: {child} \\("):
            HomeLock(tmp_path, linger_seconds=0.2).acquire()
    finally:
        os.kill(child, signal.SIGKILL)
    # Once it is gone, the home is free again.
    HomeLock(tmp_path, linger_seconds=DEADLINE).acquire().release()
