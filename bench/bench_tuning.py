"""Tuning cost: a local tuning job of N head-mode trials against N × one trial run alone.

The local executor runs the orchestrator's real tuning request (Bayesian, one trial at a time as
the local stack does) with the real train.py at 224 px. Trials share the machine's feature cache,
so only the first runs the frozen backbone over the images; the reference is one trial with the
same settings run alone (cold), times N. The tuning job with the cache turned off is the
alternative: what the trials cost when each computes its own features.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from common import Row

N_TRIALS = 4
SIZE = 224
STATIC = f'{{"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "{SIZE}", "workers": "0"}}'
RANGES = '{"lr": [0.001, 0.02], "epochs": [3, 6]}'


class _Executor:
    """A local SageMaker with the dataset in its bucket; runs one request and times it."""

    def __init__(self, root: Path, data: Path, feature_cache: Path | None):
        from droptrain.local.bucket import LocalBucket
        from droptrain.local.runtime import BUCKET
        from droptrain.local.sagemaker import LocalSageMaker
        from droptrain.local.store import Store

        from droptrain import sourcedir
        from droptrain.local.runtime import local_environment

        self.bucket = LocalBucket(root / "bucket", BUCKET)
        code, _ = sourcedir.build(include_requirements=False)  # where the jobs' toolkit reads the training code
        self.bucket.put(local_environment()["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), code)
        for path in sorted(data.rglob("*.jpg")):
            self.bucket.put_file(f"datasets/bench/{path.relative_to(data)}", path)
        self.finished: dict[str, dict] = {}
        self.arrived = threading.Condition()
        self.sagemaker = LocalSageMaker(Store(root / "state.db"), self.bucket, root / "jobs", self._emit,
                                        endpoints=None, feature_cache=feature_cache)

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


def _config():
    from chalice_app import config as config_module
    from droptrain.local.runtime import local_environment

    return config_module.load(local_environment({
        "MAX_TUNING_JOBS": str(N_TRIALS), "MAX_PARALLEL_JOBS": "1", "STATIC_HYPERPARAMETERS": STATIC, "TUNING_RANGES": RANGES,
    }))


def _dataset_ref():
    from chalice_app import names
    from droptrain.local.runtime import BUCKET

    return names.DatasetRef(BUCKET, "datasets/bench/_READY", "bench", "folder", "datasets/bench/")


def tuning_seconds(root: Path, data: Path, feature_cache: Path | None) -> float:
    from chalice_app import sagemaker_requests as requests

    executor = _Executor(root, data, feature_cache)
    try:
        request = requests.tuning_job_request(_config(), "bench-0000tune", _dataset_ref())
        # Every trial runs to its end: a trial stopped early would flatter the comparison.
        request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = "Off"
        started = time.perf_counter()
        executor.sagemaker.create_tuning_job(request)
        detail = executor.wait("bench-0000tune")
        seconds = time.perf_counter() - started
        if detail["HyperParameterTuningJobStatus"] != "Completed" or detail["TrainingJobStatusCounters"]["Completed"] != N_TRIALS:
            raise RuntimeError(f"the benchmark's tuning job did not complete its {N_TRIALS} trials: {detail}")
        return seconds
    finally:
        executor.close()


def single_trial_seconds(root: Path, data: Path) -> float:
    """One trial's request (mid-range hyperparameters), run alone with nothing cached."""
    from chalice_app import sagemaker_requests as requests

    config = _config()
    definition = requests.tuning_job_request(config, "bench-0000tune", _dataset_ref())["TrainingJobDefinition"]
    request = {k: v for k, v in definition.items() if k != "StaticHyperParameters"}
    request.update(TrainingJobName="bench-0000tune-alone", Tags=[],
                   HyperParameters={**definition["StaticHyperParameters"], "lr": "0.005", "epochs": "4"})
    executor = _Executor(root, data, feature_cache=None)
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
    from droptrain.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=100, size=SIZE, seed=0)
        alone = single_trial_seconds(tmp / "alone", tmp / "data")
        shared = tuning_seconds(tmp / "shared", tmp / "data", feature_cache=tmp / "shared" / "features")
        separate = tuning_seconds(tmp / "separate", tmp / "data", feature_cache=None)
    linear = N_TRIALS * alone
    return [
        Row(f"tuning, {N_TRIALS} head-mode trials at {SIZE} px, feature cache shared", shared, linear,
            f"{N_TRIALS} × one trial run alone", "s", target="sub-linear (< 1)"),
        Row(f"tuning, {N_TRIALS} head-mode trials at {SIZE} px, feature cache off", separate, linear,
            f"{N_TRIALS} × one trial run alone", "s"),
    ]


if __name__ == "__main__":
    import json

    from common import table, write

    print(table(json.loads(write(run(), "tuning").read_text())))
