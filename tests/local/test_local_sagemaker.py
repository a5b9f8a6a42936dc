"""The local SageMaker executor, fed the orchestrator's real request dicts (never hand-written ones)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from chalice_app import config as config_module
from chalice_app import names
from chalice_app import sagemaker_requests as requests
from chalice_app.events import TrainingJobStateChange, TuningJobStateChange
from droptrain import sourcedir
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.aws.bus import matches
from droptrain.local.engines.warm import WarmInterpreter
from droptrain.local.runtime import BUCKET, local_environment
from droptrain.local.sagemaker import LocalSageMaker
from droptrain.local.store import Store
from helpers import DEADLINE

FAKE_SOURCE = Path(__file__).resolve().parent / "fake_source"
DATASET = names.DatasetRef(BUCKET, "datasets/pets/_READY", "pets", "folder", "datasets/pets/")


def publish_source(bucket: LocalBucket, source: Path) -> None:
    """The source dir where the jobs' SOURCE_DIR_S3_URI (local_environment's default) points."""
    code, _ = sourcedir.build(source, include_requirements=False)
    bucket.put(local_environment()["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), code)


class Executor:
    def __init__(self, tmp: Path, warm: WarmInterpreter, gpus: int = 0):
        self.events: list[dict] = []
        self.arrived = threading.Condition()
        self.bucket = LocalBucket(tmp / "bucket", BUCKET)
        self.bucket.put("datasets/pets/train/a/1.jpg", b"x")
        publish_source(self.bucket, FAKE_SOURCE)
        self.store = Store(tmp / "state.db")
        self.sagemaker = LocalSageMaker(
            self.store, self.bucket, tmp / "jobs", self.emit, endpoints=None, gpus=gpus, warm=warm
        )
        self.log = tmp / "fake.log"

    def emit(self, event: dict) -> None:
        with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()

    def wait_for(self, detail_type: str, name: str, timeout: float = DEADLINE) -> dict:
        deadline = time.time() + timeout
        with self.arrived:
            while True:
                for event in self.events:
                    detail = event["detail"]
                    if event["detail-type"] == detail_type and name in (
                        detail.get("HyperParameterTuningJobName"),
                        detail.get("TrainingJobName"),
                    ):
                        return event
                if not self.arrived.wait(max(0.0, deadline - time.time())):
                    raise AssertionError(
                        f"no {detail_type} for {name} in {timeout}s; got {[e['detail-type'] for e in self.events]}"
                    )

    def runs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def executor(tmp_path, monkeypatch, shared_warm):
    ex = Executor(tmp_path, shared_warm)
    monkeypatch.setenv("FAKE_LOG", str(ex.log))
    yield ex
    ex.sagemaker.stop()


def config(**env) -> config_module.Config:
    return config_module.load(local_environment({k: str(v) for k, v in env.items()}))


def tune(executor: Executor, run: str = "pets-1a2b3c4d", **env) -> tuple[dict, dict]:
    request = requests.tuning_job_request(config(**env), run, DATASET)
    assert executor.sagemaker.create_tuning_job(request) is True
    assert executor.sagemaker.create_tuning_job(request) is False, "a second create is 'already exists'"
    event = executor.wait_for("SageMaker HyperParameter Tuning Job State Change", run)
    return event, executor.sagemaker.describe_tuning_job(run)


def children(executor: Executor, run: str) -> list[dict]:
    return [
        executor.sagemaker.describe_training_job(n)
        for n, _, r in executor.store.records("training-job")
        if r.get("TuningJobName") == run
    ]


def test_one_trial_per_gpu_whatever_the_parallel_limit(tmp_path, monkeypatch, shared_warm):
    executor = Executor(tmp_path / "gpu", shared_warm, gpus=2)
    monkeypatch.setenv("FAKE_LOG", str(executor.log))
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv("FAKE_RENDEZVOUS", f"{tmp_path / 'rendezvous'}:2")
    try:
        _, described = tune(executor, MAX_TUNING_JOBS=4, MAX_PARALLEL_JOBS=4)
    finally:
        executor.sagemaker.stop()
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    seen = [json.loads(line)["running"] for line in (tmp_path / "peers.jsonl").read_text().splitlines()]
    assert max(seen) == 2, f"two GPUs, two trials at once: {seen}"
    starts = sorted((run for run in executor.runs() if "start" in run), key=lambda run: run["start"])
    assert [run["gpu"] for run in starts[:2]] in (["0", "1"], ["1", "0"]), "each running trial has its own GPU"
    assert all(run["gpu"] in ("0", "1") and run["threads"] is None for run in starts)


def test_bayesian_tuning_within_its_limits(executor, tmp_path, monkeypatch):
    # Each trial waits until two run at once and records how many did: parallelism as the jobs saw it.
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv("FAKE_RENDEZVOUS", f"{tmp_path / 'rendezvous'}:2")
    event, described = tune(executor, MAX_TUNING_JOBS=4, MAX_PARALLEL_JOBS=2)
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    trials = children(executor, "pets-1a2b3c4d")
    assert len(trials) == 4
    assert all(t["TrainingJobName"].startswith("pets-1a2b3c4d-") for t in trials)
    seen = [json.loads(line)["running"] for line in (tmp_path / "peers.jsonl").read_text().splitlines()]
    assert len(seen) == 4 and max(seen) == 2, f"two trials at once, never three: {seen}"
    # Two at once on the CPU: each trial gets half the cores, so that they do not slow each other.
    assert {run["threads"] for run in executor.runs() if "start" in run} == {str(max(1, (os.cpu_count() or 1) // 2))}
    best = described["BestTrainingJob"]
    objectives = {
        t["TrainingJobName"]: {m["MetricName"]: m["Value"] for m in t["FinalMetricDataList"]}["valid:accuracy"]
        for t in trials
        if t["TrainingJobStatus"] == "Completed"
    }
    assert best["TrainingJobName"] == max(objectives, key=objectives.get)
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(objectives.values())
    assert set(best["TunedHyperParameters"]) == {"lr", "weight-decay", "epochs", "batch-size"}
    # What the handlers read: the event parses, carries the run's tags, and matches the app's rule.
    parsed = TuningJobStateChange.parse(event)
    assert parsed.status == "Completed" and parsed.tags["droptrain:run-id"] == "pets-1a2b3c4d"
    from chalice_app import patterns

    assert matches(patterns.tuning_job_state_change({}), event)
    # The counters are the trials' statuses (the median rule may stop the last trial early: it is
    # started only after three have finished, and how fast they do depends on the machine).
    statuses = [t["TrainingJobStatus"] for t in trials]
    assert described["TrainingJobStatusCounters"]["Completed"] == statuses.count("Completed") >= 3
    assert (
        described["TrainingJobStatusCounters"]["Stopped"]
        == statuses.count("Stopped")
        == 4 - statuses.count("Completed")
    )


def test_metric_parsing_uses_the_requests_regexes(executor):
    tune(executor, MAX_TUNING_JOBS=1)
    trial = children(executor, "pets-1a2b3c4d")[0]
    epochs = int(trial["HyperParameters"]["epochs"])
    metrics = {m["MetricName"]: m["Value"] for m in trial["FinalMetricDataList"]}
    lr = float(trial["HyperParameters"]["lr"])
    import math

    quality = math.exp(-abs(math.log10(lr) - math.log10(0.005)))
    assert metrics["valid:accuracy"] == pytest.approx(round(quality * (1 - 0.5**epochs), 4))
    assert metrics["test:accuracy"] == pytest.approx(round(quality * 0.95, 4))
    assert set(metrics) == {"train:loss", "valid:loss", "valid:accuracy", "test:loss", "test:accuracy"}
    assert trial["HyperParameters"]["_tuning_objective_metric"] == "valid:accuracy"
    assert trial["TuningJobArn"].endswith("/pets-1a2b3c4d")
    artifact = trial["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{BUCKET}/runs/pets-1a2b3c4d/tuning/{trial['TrainingJobName']}/output/model.tar.gz"
    assert executor.bucket.path_of_uri(artifact).is_file()
    child_event = executor.wait_for("SageMaker Training Job State Change", trial["TrainingJobName"])
    assert TrainingJobStateChange.parse(child_event).tuning_job_arn, "trials say they belong to a tuning job"


def test_random_and_grid(executor):
    _, random_run = tune(executor, "rand-1a2b3c4d", TUNING_STRATEGY="Random", MAX_TUNING_JOBS=3)
    assert random_run["HyperParameterTuningJobStatus"] == "Completed" and len(children(executor, "rand-1a2b3c4d")) == 3
    _, grid = tune(executor, "grid-1a2b3c4d", TUNING_STRATEGY="Grid", MAX_PARALLEL_JOBS=2)
    trials = children(executor, "grid-1a2b3c4d")
    combos = {(t["HyperParameters"]["lr"], t["HyperParameters"]["batch-size"]) for t in trials}
    assert len(trials) == len(combos) == 6, "every grid point once: 3 learning rates × 2 batch sizes"


def test_hyperband_stops_weak_trials_early(executor, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.15")
    _, described = tune(
        executor,
        TUNING_STRATEGY="Hyperband",
        MAX_TUNING_JOBS=8,
        MAX_PARALLEL_JOBS=2,
        TUNING_RANGES='{"lr": [0.00001, 0.1], "epochs": [1, 8]}',
    )
    trials = children(executor, "pets-1a2b3c4d")
    assert all(t["HyperParameters"]["epochs"] == "8" for t in trials), "Hyperband's resource is the epoch"
    stopped = [t for t in trials if t["TrainingJobStatus"] == "Stopped"]
    assert stopped, "some weak trials are stopped before their last epoch"
    assert all(len([m for m in t["FinalMetricDataList"]]) and "early" in t["FailureReason"] for t in stopped)
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    assert described["TrainingJobStatusCounters"]["Stopped"] == len(stopped)


def test_a_failing_trial_does_not_fail_the_tuning_job(executor, monkeypatch):
    monkeypatch.setenv("FAIL_AT_LR", "0.005")
    _, described = tune(executor, "mixed-1a2b3c4d", TUNING_STRATEGY="Grid", TUNING_RANGES='{"lr": [0.001, 0.01]}')
    trials = children(executor, "mixed-1a2b3c4d")
    failed = [t for t in trials if t["TrainingJobStatus"] == "Failed"]
    assert failed and all("loss became NaN" in t["FailureReason"] for t in failed)
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    assert float(described["BestTrainingJob"]["TunedHyperParameters"]["lr"]) < 0.005
    assert described["TrainingJobStatusCounters"]["NonRetryableError"] == len(failed)


def test_every_trial_failing_fails_the_tuning_job(executor, monkeypatch):
    monkeypatch.setenv("FAIL_AT_LR", "0")
    event, described = tune(executor, MAX_TUNING_JOBS=2)
    assert described["HyperParameterTuningJobStatus"] == "Failed"
    assert "No training job succeeded" in described["FailureReason"]
    assert "BestTrainingJob" not in described
    assert TuningJobStateChange.parse(event).status == "Failed"


def test_final_training_job_from_the_real_request(executor):
    request = requests.final_training_request(
        config(),
        "pets-1a2b3c4d",
        DATASET.uri,
        requests.static_hyperparameters(config()),
        {"lr": "0.005", "epochs": "2"},
    )
    assert executor.sagemaker.create_training_job(request) is True
    event = executor.wait_for("SageMaker Training Job State Change", "pets-1a2b3c4d-final")
    parsed = TrainingJobStateChange.parse(event)
    assert parsed.status == "Completed" and parsed.tags["droptrain:role"] == "final" and parsed.tuning_job_arn is None
    described = executor.sagemaker.describe_training_job("pets-1a2b3c4d-final")
    assert described["HyperParameters"]["debug-out"] == "/opt/ml/output/data/debug"
    prefix = "runs/pets-1a2b3c4d/final/pets-1a2b3c4d-final/output/"
    assert (
        executor.bucket.path(prefix + "model.tar.gz").is_file()
        and executor.bucket.path(prefix + "output.tar.gz").is_file()
    )
    assert executor.sagemaker.list_tags(described["TrainingJobArn"])["droptrain:role"] == "final"


def test_a_killed_process_fails_the_job_with_a_reason(executor, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "5")
    request = requests.final_training_request(
        config(), "pets-1a2b3c4d", DATASET.uri, requests.static_hyperparameters(config()), {"epochs": "5"}
    )
    executor.sagemaker.create_training_job(request)
    deadline = time.time() + DEADLINE
    while not executor.runs() and time.time() < deadline:
        time.sleep(0.05)
    import os
    import signal

    os.kill(executor.runs()[0]["pid"], signal.SIGKILL)
    executor.wait_for("SageMaker Training Job State Change", "pets-1a2b3c4d-final")
    described = executor.sagemaker.describe_training_job("pets-1a2b3c4d-final")
    assert described["TrainingJobStatus"] == "Failed"
    # What the training toolkit reports for a script that died, as SageMaker shows it.
    assert described["FailureReason"].startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode -9")


def test_head_mode_trials_share_frozen_features(tmp_path, tiny_dataset, shared_warm):
    """The real train.py under the executor: the first trial computes the frozen features, the
    others load them from the machine's feature cache."""
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    for path in sorted(tiny_dataset.rglob("*.jpg")):
        bucket.put_file(f"datasets/pets/{path.relative_to(tiny_dataset)}", path)
    publish_source(bucket, sourcedir.TRAINING_DIR)
    store = Store(tmp_path / "state.db")
    lines: dict[str, list[str]] = {}
    done = threading.Event()
    sagemaker = LocalSageMaker(
        store,
        bucket,
        tmp_path / "jobs",
        lambda e: done.set() if "Tuning" in e["detail-type"] else None,
        endpoints=None,
        on_line=lambda job, line: lines.setdefault(job, []).append(line),
        feature_cache=tmp_path / "cache",
        warm=shared_warm,
    )
    static = '{"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "48"}'
    request = requests.tuning_job_request(
        config(
            MAX_TUNING_JOBS=3, STATIC_HYPERPARAMETERS=static, TUNING_RANGES='{"lr": [0.001, 0.01], "epochs": [2, 3]}'
        ),
        "pets-1a2b3c4d",
        DATASET,
    )
    try:
        sagemaker.create_tuning_job(request)
        assert done.wait(DEADLINE), "the tuning job did not finish"
    finally:
        sagemaker.stop()
    trials = sorted(lines)
    assert len(trials) == 3
    assert all(sagemaker.describe_training_job(t)["TrainingJobStatus"] == "Completed" for t in trials)
    n_images = sum(1 for _ in tiny_dataset.rglob("*.jpg"))
    computed = [t for t in trials if f"computed frozen features for {n_images} images" in "\n".join(lines[t])]
    loaded = [
        t
        for t in trials
        if f"loaded frozen features for {n_images} images from the feature cache" in "\n".join(lines[t])
    ]
    frozen = {t: [line for line in lines[t] if "frozen" in line] for t in trials}
    assert computed == trials[:1] and loaded == trials[1:], frozen


def test_a_stop_that_comes_while_a_job_thread_starts_does_not_fail(tmp_path, monkeypatch):
    """A job's thread created, the stack stopped, then the thread started: the stop joined a thread not
    yet started (RuntimeError) and the stack's stop failed half-way (seen in CI)."""
    sagemaker = LocalSageMaker(
        Store(tmp_path / "state.db"),
        LocalBucket(tmp_path / "b", BUCKET),
        tmp_path / "j",
        lambda e: None,
        endpoints=None,
        warm_jobs=False,
    )
    ran = threading.Event()

    class StoppedWhileStarting(threading.Thread):
        def start(self):
            sagemaker.stop(timeout=DEADLINE)  # the stop comes between the thread's creation and its start
            super().start()

    monkeypatch.setattr(threading, "Thread", StoppedWhileStarting)
    thread = sagemaker._spawn(lambda name: ran.set(), "job-1")
    thread.join(DEADLINE)
    assert ran.is_set(), "the thread ran; the stop did not fail on it"
