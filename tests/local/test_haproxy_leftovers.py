"""A killed stack's HAProxy, ended at the next start, and the one its dying Ray starts again meanwhile."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

from droptrain.local.engines.haproxy import PIDS, end_leftovers
from helpers import DEADLINE


def _fake_haproxy(folder: Path) -> subprocess.Popen:
    """A process named ``haproxy`` (a copy of sleep), its PID recorded as the wrapper records it."""
    binary = folder / "bin" / "haproxy"
    if not binary.exists():
        binary.parent.mkdir(parents=True)
        shutil.copy(shutil.which("sleep"), binary)
    process = subprocess.Popen([str(binary), str(DEADLINE)])
    with open(folder / PIDS, "a") as pids:
        pids.write(f"{process.pid}\n")
    return process


def test_an_haproxy_started_again_after_the_recorded_one_ended_is_ended_too(tmp_path):
    first = _fake_haproxy(tmp_path)
    second: list[subprocess.Popen] = []

    def manager_starts_it_again():  # what a killed stack's HAProxy manager did while its Ray was ending
        first.wait(DEADLINE)
        time.sleep(0.5)
        second.append(_fake_haproxy(tmp_path))

    restarter = threading.Thread(target=manager_starts_it_again)
    restarter.start()
    try:
        ended = end_leftovers(tmp_path, quiet=2)
        restarter.join(DEADLINE)
        assert ended == [first.pid, second[0].pid]
        assert second[0].wait(DEADLINE) is not None, "the second one ended as well"
        assert not (tmp_path / PIDS).exists(), "and the record is gone"
    finally:
        for process in [first, *second]:
            if process.poll() is None:
                process.kill()


def test_records_of_haproxies_already_gone_are_forgotten_at_once(tmp_path):
    gone = _fake_haproxy(tmp_path)
    gone.kill()
    gone.wait(DEADLINE)
    started = time.monotonic()
    assert end_leftovers(tmp_path, quiet=DEADLINE) == [], "nothing was running: nothing to wait for"
    assert time.monotonic() - started < DEADLINE and not (tmp_path / PIDS).exists()
    assert not psutil.pid_exists(gone.pid) or psutil.Process(gone.pid).status() == psutil.STATUS_ZOMBIE
