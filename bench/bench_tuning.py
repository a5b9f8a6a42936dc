"""Tuning cost: local tuning jobs against one trial run alone, and against the course project's loop.

The local executor runs the orchestrator's real tuning request (Bayesian, one trial at a time as
the local stack does) with the real train.py, each trial through AWS's training toolkit.

* 224 px: trials share the machine's feature cache, so only the first runs the frozen backbone over
  the images; the reference is one trial with the same settings run alone (cold), times N. The
  tuning job with the cache turned off is the alternative: each trial computes its own features.
* 64 px, ~1,800 images, 4 trials × 3 epochs: the whole tuning job against the course project's
  loop on the same data (``course_trial.py``, one fresh process per trial, as each was a training
  job), and the fixed cost of a trial (its wall time less its epochs: starting, loading, the test
  split, writing and packing the model) with the warm interpreter and without it (every job
  in a fresh interpreter, as before ``droptrain.local.engines.warm``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import Row

HERE = Path(__file__).resolve().parent
N_TRIALS = 4
SIZE = 224
SMALL = 64
STATIC = f'{{"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "{SIZE}", "workers": "0"}}'
RANGES = '{"lr": [0.001, 0.02], "epochs": [3, 6]}'


class _Executor:
    """A local SageMaker with the dataset in its bucket; runs one request and times it."""

    def __init__(self, root: Path, data: Path, feature_cache: Path | None, warm: bool = True):
        from droptrain import sourcedir
        from droptrain.local.aws.bucket import LocalBucket
        from droptrain.local.runtime import BUCKET, local_environment
        from droptrain.local.sagemaker import LocalSageMaker
        from droptrain.local.store import Store

        self.bucket = LocalBucket(root / "bucket", BUCKET)
        code, _ = sourcedir.build(include_requirements=False)  # where the jobs' toolkit reads the training code
        self.bucket.put(local_environment()["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), code)
        for path in sorted(data.rglob("*.jpg")):
            self.bucket.put_file(f"datasets/bench/{path.relative_to(data)}", path)
        self.finished: dict[str, dict] = {}
        self.arrived = threading.Condition()
        self.sagemaker = LocalSageMaker(
            Store(root / "state.db"),
            self.bucket,
            root / "jobs",
            self._emit,
            endpoints=None,
            feature_cache=feature_cache,
            warm_jobs=warm,
        )
        if warm:  # as droptrain up does when it starts, before any dataset arrives
            self.sagemaker.warm.start_server()

    def _emit(self, event: dict) -> None:
        detail = event["detail"]
        with self.arrived:
            self.finished[detail.get("HyperParameterTuningJobName") or detail["TrainingJobName"]] = detail
            self.arrived.notify_all()

    def wait(self, name: str, timeout: float = 1800) -> dict:
        with self.arrived:
            if not self.arrived.wait_for(lambda: name in self.finished, timeout):
                raise RuntimeError(f"{name} did not finish in {timeout}s")
            return self.finished[name]

    def close(self) -> None:
        self.sagemaker.stop()


def _config(static: str = STATIC, trials: int = N_TRIALS, parallel: int = 1):
    from chalice_app import config as config_module
    from droptrain.local.runtime import local_environment

    return config_module.load(
        local_environment(
            {
                "MAX_TUNING_JOBS": str(trials),
                "MAX_PARALLEL_JOBS": str(parallel),
                "STATIC_HYPERPARAMETERS": static,
                "TUNING_RANGES": RANGES,
            }
        )
    )


def _dataset_ref():
    from chalice_app import names
    from droptrain.local.runtime import BUCKET

    return names.DatasetRef(BUCKET, "datasets/bench/_READY", "bench", "folder", "datasets/bench/")


def tuning_seconds(
    root: Path,
    data: Path,
    feature_cache: Path | None,
    static: str = STATIC,
    epochs: int | None = None,
    warm: bool = True,
    trials: int = N_TRIALS,
    parallel: int = 1,
) -> tuple[float, list[float]]:
    """The tuning job's wall time, and each trial's fixed cost (its wall time less its epochs).
    ``epochs``: a fixed epoch count instead of the tuned range."""
    from chalice_app import sagemaker_requests as requests

    executor = _Executor(root, data, feature_cache, warm)
    try:
        request = requests.tuning_job_request(_config(static, trials, parallel), "bench-0000tune", _dataset_ref())
        # Every trial runs to its end: a trial stopped early would flatter the comparison.
        request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = "Off"
        if epochs is not None:
            ranges = request["HyperParameterTuningJobConfig"]["ParameterRanges"]
            ranges["IntegerParameterRanges"] = [r for r in ranges["IntegerParameterRanges"] if r["Name"] != "epochs"]
            request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] = str(epochs)
        started = time.perf_counter()
        executor.sagemaker.create_tuning_job(request)
        detail = executor.wait("bench-0000tune")
        seconds = time.perf_counter() - started
        if (
            detail["HyperParameterTuningJobStatus"] != "Completed"
            or detail["TrainingJobStatusCounters"]["Completed"] != trials
        ):
            raise RuntimeError(f"the benchmark's tuning job did not complete its {trials} trials: {detail}")
        return seconds, [
            _fixed_cost(executor, name, record) for name, _, record in executor.sagemaker.store.records("training-job")
        ]
    finally:
        executor.close()


def _fixed_cost(executor: _Executor, name: str, record: dict) -> float:
    """From CreateTrainingJob to the job's end, less the epochs train.py timed (history.json)."""
    from datetime import datetime

    history = json.loads(
        (executor.sagemaker.training.jobs_root / name / "output" / "data" / "history.json").read_text()
    )
    wall = (
        datetime.fromisoformat(record["TrainingEndTime"]) - datetime.fromisoformat(record["CreationTime"])
    ).total_seconds()
    return wall - sum(epoch["seconds"] for epoch in history)


def course_loop_seconds(data: Path, root: Path, epochs: int, size: int) -> float:
    """N trials of the course project's script, one after the other, each in a fresh interpreter."""
    started = time.perf_counter()
    for trial, lr in enumerate(np.geomspace(1e-3, 2e-2, N_TRIALS)):
        subprocess.run(
            [
                sys.executable,
                str(HERE / "course_trial.py"),
                "--data",
                str(data),
                "--epochs",
                str(epochs),
                "--lr",
                str(lr),
                "--size",
                str(size),
                "--out",
                str(root / f"trial-{trial}.pth"),
            ],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - started


def single_trial_seconds(root: Path, data: Path) -> float:
    """One trial's request (mid-range hyperparameters), run alone with nothing cached."""
    from chalice_app import sagemaker_requests as requests

    config = _config()
    definition = requests.tuning_job_request(config, "bench-0000tune", _dataset_ref())["TrainingJobDefinition"]
    request = {k: v for k, v in definition.items() if k != "StaticHyperParameters"}
    request.update(
        TrainingJobName="bench-0000tune-alone",
        Tags=[],
        HyperParameters={**definition["StaticHyperParameters"], "lr": "0.005", "epochs": "4"},
    )
    executor = _Executor(root, data, feature_cache=None, warm=False)
    try:
        started = time.perf_counter()
        executor.sagemaker.create_training_job(request)
        detail = executor.wait("bench-0000tune-alone")
        if detail["TrainingJobStatus"] != "Completed":
            raise RuntimeError(f"the benchmark's single trial failed: {detail.get('FailureReason')}")
        return time.perf_counter() - started
    finally:
        executor.close()


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        return _rows(**_measure(Path(tmp)))


def _measure(tmp: Path) -> dict:
    """Every timing the rows compare, each in its own folder under ``tmp``."""
    from droptrain.synthetic import make_dataset

    make_dataset(tmp / "data", classes=4, per_class=100, size=SIZE, seed=0)
    alone = single_trial_seconds(tmp / "alone", tmp / "data")
    shared, _ = tuning_seconds(tmp / "shared", tmp / "data", feature_cache=tmp / "shared" / "features")
    separate, _ = tuning_seconds(tmp / "separate", tmp / "data", feature_cache=None)
    # ~1,800 images at 64 px, 4 trials × 3 epochs in head mode: ours against the course loop.
    make_dataset(tmp / "small", classes=10, per_class=180, size=SMALL, seed=0)
    small_static = STATIC.replace(f'"image-size": "{SIZE}"', f'"image-size": "{SMALL}"')
    ours, fixed = tuning_seconds(
        tmp / "small-warm", tmp / "small", tmp / "small-warm" / "features", small_static, epochs=3
    )
    _, fixed_cold = tuning_seconds(
        tmp / "small-cold", tmp / "small", tmp / "small-cold" / "features", small_static, epochs=3, warm=False
    )
    course = course_loop_seconds(tmp / "small", tmp, epochs=3, size=SMALL)
    # Two full-mode trials at once on this machine's cores (each given half), against one after the other.
    full_static = small_static.replace('"train-mode": "head"', '"train-mode": "full"')
    together, _ = tuning_seconds(tmp / "two-at-once", tmp / "small", None, full_static, epochs=1, trials=2, parallel=2)
    in_a_row, _ = tuning_seconds(tmp / "in-a-row", tmp / "small", None, full_static, epochs=1, trials=2, parallel=1)
    return {
        "alone": alone,
        "shared": shared,
        "separate": separate,
        "ours": ours,
        "fixed": fixed,
        "fixed_cold": fixed_cold,
        "course": course,
        "together": together,
        "in_a_row": in_a_row,
    }


def _rows(alone, shared, separate, ours, fixed, fixed_cold, course, together, in_a_row) -> list[Row]:
    linear = N_TRIALS * alone
    # The first trial computes the frozen features the others reuse: the fixed cost is the later ones'.
    later, later_cold = statistics.median(fixed[1:]), statistics.median(fixed_cold[1:])
    return [
        Row(
            f"tuning, {N_TRIALS} head-mode trials at {SIZE} px, feature cache shared",
            shared,
            linear,
            f"{N_TRIALS} × one trial run alone in a fresh interpreter",
            "s",
            target="sub-linear (< 1)",
        ),
        Row(
            f"tuning, {N_TRIALS} head-mode trials at {SIZE} px, feature cache off",
            separate,
            linear,
            f"{N_TRIALS} × one trial run alone in a fresh interpreter",
            "s",
        ),
        Row(
            f"tuning, {N_TRIALS} × 3 epochs head mode, {SMALL} px, ~1,800 images: ours vs the course loop",
            ours,
            course,
            f"the course loop: {N_TRIALS} × course_trial.py",
            "s",
            target="<= 0.2 (>= 5x faster)",
        ),
        Row(
            f"per-trial fixed cost (wall time less epochs), head mode, {SMALL} px, median of trials 2-{N_TRIALS}",
            later,
            later_cold,
            "the same trials, each job in a fresh interpreter",
            "s",
            target="< 1.5 s",
        ),
        Row(
            f"tuning, 2 full-mode trials at {SMALL} px, ~1,800 images, run at once on {os.cpu_count()} cores",
            together,
            in_a_row,
            "the same 2 trials one after the other",
            "s",
            target="<= 1 (not slower)",
        ),
    ]


if __name__ == "__main__":
    from common import table, write

    print(table(json.loads(write(run(), "tuning").read_text())))
