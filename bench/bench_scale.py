"""What grows with the data and the cluster: the upload's cheap validation over ever larger listings,
the local stack's bucket watcher over a large folder dataset, and a training job of two instances
(two hosts, torchrun) against one in the local SageMaker.

The validation reads one listing (keys and sizes) and must stay linear: time per key flat from 1,000
to 1,000,000 keys. The two-host job runs the same request as the one-host job, end to end (toolkit,
torchrun's rendezvous, every epoch, the artifact packed), on this machine's cores: what the local
runtime's cluster costs, not a speed-up (both hosts share the same two cores).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import Row, table, write

ROOT = Path(__file__).resolve().parent.parent
LISTINGS = (1_000, 10_000, 50_000, 1_000_000)
SPLITS = ("train", "train", "train", "valid", "test")


def _listing(count: int) -> list[tuple[str, int]]:
    classes = 100
    return [(f"{SPLITS[i % 5]}/class-{(i // 5) % classes:03d}/{i:08d}.jpg", 30_000 + i % 977) for i in range(count)]


def validation_rows() -> list[Row]:
    from chalice_app import validation

    rows, per_key = [], {}
    for count in LISTINGS:
        listing = _listing(count)
        started = time.perf_counter()
        report = validation.check_keys(listing)
        seconds = time.perf_counter() - started
        assert report.ok and report.images == count, report.reasons
        per_key[count] = seconds / count * 1e6
    for count in LISTINGS:
        rows.append(
            Row(
                f"cheap validation of a listing of {count:,} keys (microseconds per key)",
                per_key[count],
                per_key[LISTINGS[0]],
                f"per key at {LISTINGS[0]:,}",
                "us/key",
                target="flat (linear total)",
            )
        )
    return rows


def _job_seconds(tmp: Path, data: Path, instances: int) -> float:
    from chalice_app import config as config_module
    from chalice_app import sagemaker_requests as requests
    from droptrain import sourcedir
    from droptrain.local.aws.bucket import LocalBucket
    from droptrain.local.runtime import BUCKET, local_environment
    from droptrain.local.sagemaker import LocalSageMaker
    from droptrain.local.store import Store

    bucket = LocalBucket(tmp / "bucket", BUCKET)
    for path in sorted(data.rglob("*.jpg")):
        bucket.put_file(f"datasets/pets/{path.relative_to(data)}", path)
    env = local_environment({"FINAL_INSTANCE_COUNT": str(instances)})
    code, _ = sourcedir.build(ROOT / "training", include_requirements=False)
    bucket.put(env["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), code)
    ended = threading.Event()
    sagemaker = LocalSageMaker(Store(tmp / "state.db"), bucket, tmp / "jobs", lambda e: ended.set(), endpoints=None)
    config = config_module.load(env)
    static = {**requests.static_hyperparameters(config), "arch": "resnet18", "weights": "none", "image-size": "64"}
    static |= {"train-mode": "full", "epochs": "3", "batch-size": "32", "workers": "0", "profile": "off"}
    request = requests.final_training_request(config, "pets-0b5e55ed", f"s3://{BUCKET}/datasets/pets/", static, {})
    started = time.perf_counter()
    sagemaker.create_training_job(request)
    ended.wait(3600)
    seconds = time.perf_counter() - started
    described = sagemaker.describe_training_job(request["TrainingJobName"])
    sagemaker.stop()
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    return seconds


def hosts_row() -> Row:
    from droptrain.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, classes=4, per_class=150, size=64, seed=0)
        one = _job_seconds(Path(tmp) / "one", data, 1)
        two = _job_seconds(Path(tmp) / "two", data, 2)
    return Row(
        "local training job end to end, 2 instances (2 hosts, torchrun, gloo) on this machine's cores",
        one / two,
        1.0,
        f"1 instance ({one:.1f} s against {two:.1f} s: speed relative to it)",
        "x",
        target="no target: what the local cluster costs",
    )


def watcher_row(images: int = 20_000, job_files: int = 5_000, rounds: int = 4) -> Row:
    """The local stack's bucket watcher, idle, over a folder dataset of ``images`` images beside
    ``job_files`` files of earlier runs: its share of one core over whole rounds (list, then wait),
    the watcher thread's own CPU time."""
    from droptrain.local.runtime import LocalRuntime

    with tempfile.TemporaryDirectory() as tmp:
        runtime = LocalRuntime(Path(tmp) / "home", say=lambda m: None)
        for i in range(images):
            runtime.bucket.put(f"datasets/big/train/class-{i % 100:03d}/{i:06d}.jpg", b"x")
        for i in range(job_files):
            runtime.bucket.put(f"runs/big-{i % 10}/debug/{i:06d}.tfevents", b"x")
        runtime.bucket.put("datasets/big/_READY", b"")
        runtime._emit = lambda event: None  # the marker's event: no pipeline behind this watcher
        listing, starts = runtime.scan, []

        def scan(prefix=None):  # each round's start: the clock and the thread's CPU time
            starts.append((time.monotonic(), time.thread_time()))
            if len(starts) > rounds:
                runtime._stop.set()
                return 0
            return listing(prefix)

        runtime.scan = scan
        runtime._watch()
    (wall, cpu), (wall_end, cpu_end) = starts[0], starts[-1]
    return Row(
        f"the idle bucket watcher over a {images:,}-image folder dataset and {job_files:,} job files (share of a core)",
        (cpu_end - cpu) / (wall_end - wall),
        0.1,
        "a tenth of a core",
        "cores",
        target="<= 0.1",
    )


def run() -> list[Row]:
    sys.path.insert(0, str(ROOT))
    return [*validation_rows(), watcher_row(), hosts_row()]


if __name__ == "__main__":
    print(table(json.loads(write(run(), "scale").read_text())))
