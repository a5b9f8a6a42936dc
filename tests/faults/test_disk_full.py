"""A full disk: the state is still recorded, a job that cannot be followed fails and its process ends,
and an upload says so in one line and leaves nothing half-written.

The disk is a small tmpfs mounted for the test (this suite runs as root on our machines and in CI).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from faults.test_stack_faults import _processes_in
from local.test_local_sagemaker import DATASET, FAKE_SOURCE, config, publish_source

from chalice_app import sagemaker_requests as requests
from droptrain import cli
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.sagemaker import LocalSageMaker
from droptrain.local.stage import BUCKET
from droptrain.local.store import Store
from helpers import DEADLINE


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"the disk-full tests mount a small tmpfs, which needs root: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> None:
    """Write until the disk refuses another byte."""
    with open(disk / "filler", "ab", buffering=0) as handle:
        for chunk in (1024 * 1024, 4096, 1):
            try:
                while True:
                    handle.write(bytes(chunk))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


def test_the_store_still_records_on_a_full_disk(small_disk):
    store = Store(small_disk / "state.db", reserve=True)
    store.insert("training-job", "pets-1", {"TrainingJobStatus": "InProgress"}, "InProgress")
    fill(small_disk)
    # A record larger than any space SQLite kept: it needs new pages, on a disk with none.
    assert store.transition("training-job", "pets-1", ("InProgress",), "Failed", FailureReason="x" * 600_000), (
        "recorded, in the room the reserve gave up"
    )
    assert store.status("training-job", "pets-1") == "Failed"
    assert not (small_disk / "state.db.reserve").exists()


def test_a_job_the_runner_cannot_follow_on_a_full_disk_fails_and_its_process_ends(
    small_disk, tmp_path, monkeypatch, shared_warm
):
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)  # the bucket on another disk: only the jobs' is full
    bucket.put("datasets/pets/train/a/1.jpg", b"x")
    publish_source(bucket, FAKE_SOURCE)
    store = Store(small_disk / "state.db", reserve=True)
    events: list[dict] = []
    sagemaker = LocalSageMaker(store, bucket, small_disk / "jobs", events.append, endpoints=None, warm=shared_warm)
    started = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(started))
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.2")
    request = requests.final_training_request(
        config(), "pets-1a2b3c4d", DATASET.uri, requests.static_hyperparameters(config()), {"epochs": "1000"}
    )
    try:
        sagemaker.create_training_job(request)
        deadline = time.monotonic() + DEADLINE
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = json.loads(started.read_text().splitlines()[0])["pid"]
        fill(small_disk)  # the next line of the job's log has nowhere to go
        while store.status("training-job", request["TrainingJobName"]) == "InProgress":
            assert time.monotonic() < deadline, "the job stayed InProgress on the full disk"
            time.sleep(0.1)
        described = sagemaker.describe_training_job(request["TrainingJobName"])
        assert described["TrainingJobStatus"] == "Failed", described
        assert "No space left on device" in described["FailureReason"], described["FailureReason"]
        assert [e["detail"]["TrainingJobStatus"] for e in events] == ["Failed"], "and announced"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            "train.py ended with its job"
        )
    finally:
        sagemaker.stop()


def test_an_upload_into_a_full_disk_says_so_in_one_line_and_leaves_nothing_half_written(
    small_disk, tiny_dataset, capsys
):
    home = small_disk / "home"
    (home / "bucket").mkdir(parents=True)
    fill(small_disk)
    assert cli.main(["upload", str(tiny_dataset), "--name", "pets", "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("droptrain upload: writing to ") and "No space left" in err[0], err
    assert [p for p in (home / "bucket").rglob("*") if p.name.endswith(".partial")] == []
    os.unlink(small_disk / "filler")


class _FullDiskLog:
    """The job's log on a disk that is full: the first line written fails, as a write there does."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, line: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_runner_that_cannot_write_the_jobs_log_ends_the_job_and_its_process(tmp_path, monkeypatch, shared_warm):
    from droptrain.local.sagemaker import jobs

    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    bucket.put("datasets/pets/train/a/1.jpg", b"x")
    publish_source(bucket, FAKE_SOURCE)
    store, events = Store(tmp_path / "state.db", reserve=True), []
    sagemaker = LocalSageMaker(store, bucket, tmp_path / "jobs", events.append, endpoints=None, warm=shared_warm)
    started = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(started))
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.2")
    monkeypatch.setattr(jobs, "open_log", lambda paths: _FullDiskLog())
    request = requests.final_training_request(
        config(), "pets-1a2b3c4d", DATASET.uri, requests.static_hyperparameters(config()), {"epochs": "1000"}
    )
    try:
        sagemaker.create_training_job(request)
        deadline = time.monotonic() + DEADLINE
        while store.status("training-job", request["TrainingJobName"]) == "InProgress":
            assert time.monotonic() < deadline, "the job stayed InProgress"
            time.sleep(0.1)
        described = sagemaker.describe_training_job(request["TrainingJobName"])
        assert described["TrainingJobStatus"] == "Failed" and "No space left on device" in described["FailureReason"]
        assert _processes_in(tmp_path / "jobs") == [], "train.py ended with its job: nothing is left for Ctrl-C to miss"
    finally:
        sagemaker.stop()


def test_a_stop_asked_on_a_full_disk_says_it_was_not_recorded(small_disk, capsys):
    home = small_disk / "home"
    store = Store(home / "state.db")
    store.insert("tuning-job", "pets-1a2b3c4d", {"Tags": {}}, "InProgress")
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no room kept in the log: the next write needs blocks
    store.close()
    fill(small_disk)
    assert cli.main(["stop", "pets-1a2b3c4d", "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("droptrain stop: ") and "is its disk full?" in err[0], err
    assert cli.main(["status", "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("droptrain status: ") and "is its disk full?" in err[0], err
