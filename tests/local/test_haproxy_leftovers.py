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
    ended: list[list[int]] = []
    ender = threading.Thread(target=lambda: ended.append(end_leftovers(tmp_path, quiet=DEADLINE)))
    ender.start()
    # What a killed stack's HAProxy manager did while its Ray was ending: started it again, at once,
    # and once more (an attempt that died at once, its PID recorded all the same).
    first.wait(DEADLINE)
    second = _fake_haproxy(tmp_path)
    try:
        assert second.wait(DEADLINE) is not None, "the one started again is ended as well"
        stillborn = subprocess.Popen(["true"])
        stillborn.wait(DEADLINE)
        with open(tmp_path / PIDS, "a") as pids:
            pids.write(f"{stillborn.pid}\n")
        ender.join(DEADLINE)
        assert ended == [[first.pid, second.pid]], "a record of nothing running ends the watch at once"
        assert not list(tmp_path.glob("haproxy.*")), "and the records are gone"
    finally:
        for process in [first, second]:
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


def test_a_worker_its_master_took_along_is_no_error(tmp_path, monkeypatch):
    """HAProxy's master ends its workers: a recorded worker may be gone (reaped) before its own signal."""
    master, worker = _fake_haproxy(tmp_path), _fake_haproxy(tmp_path)
    send_signal = psutil.Process.send_signal

    def master_takes_its_worker_along(process, sig):
        send_signal(process, sig)
        if process.pid == master.pid:
            worker.kill()
            worker.wait(DEADLINE)

    monkeypatch.setattr(psutil.Process, "send_signal", master_takes_its_worker_along)
    try:
        assert end_leftovers(tmp_path, quiet=0) == [master.pid, worker.pid]
        assert master.wait(DEADLINE) is not None and not list(tmp_path.glob("haproxy.*"))
    finally:
        for process in [master, worker]:
            if process.poll() is None:
                process.kill()
