"""A local SageMaker: the orchestrator's own request dicts in, SageMaker's describe shapes and
EventBridge state-change events out.

* Training jobs run through AWS's training toolkit (``droptrain.local.jobs``), exactly as the
  PyTorch training container runs them; their output is parsed with the request's
  MetricDefinitions, and ``model.tar.gz`` / ``output.tar.gz`` are packed where SageMaker puts them.
* Tuning jobs search with Optuna: TPE for Bayesian, random, grid, and Hyperband pruning on the
  per-epoch objective (median-rule pruning for ``TrainingJobEarlyStoppingType: Auto``), within
  MaxNumberOfTrainingJobs and MaxParallelTrainingJobs.
* Everything is kept in the store, so a restarted runtime picks up where it stopped: finished
  trials are replayed into the study, interrupted jobs run again and resume from their checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from chalice_app.adapters.errors import NotFoundError
from droptrain.local import jobs
from droptrain.local.bucket import LocalBucket
from droptrain.local.store import Store

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

ACCOUNT, REGION = "000000000000", "local"
TERMINAL = ("Completed", "Failed", "Stopped")
Emit = Callable[[dict[str, Any]], None]
OnLine = Callable[[str, str], None]


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def as_described(record: Mapping[str, Any], hidden: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stored record in boto3's shape: ``*Time`` fields as datetimes, internal fields left out."""
    out = {}
    for key, value in record.items():
        if key in hidden:
            continue
        if key.endswith("Time") and isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif isinstance(value, dict):
            value = as_described(value)
        out[key] = value
    return out


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name}"


def _tags(request: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in request.get("Tags", [])}


def _event(detail_type: str, kind: str, name: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "0", "id": hashlib.sha256(f"{kind}/{name}/{detail}/{time.time_ns()}".encode()).hexdigest()[:32],
        "detail-type": detail_type, "source": "aws.sagemaker", "account": ACCOUNT,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
        "resources": [arn(kind, name)], "detail": detail,
    }


class LocalSageMaker:
    def __init__(self, store: Store, bucket: LocalBucket, jobs_root: Path, emit: Emit, endpoints: Any,
                 on_line: OnLine = lambda job, line: None, feature_cache: Path | None = None):
        self.store = store
        self.bucket = bucket
        self.jobs_root = jobs_root
        self.emit = emit
        self.endpoints = endpoints
        self.on_line = on_line
        # Shared by every job on this machine: head-mode trials of one tuning job compute the
        # frozen backbone's features once (train.py --feature-cache).
        self.job_env = {"DROPTRAIN_FEATURE_CACHE": str(feature_cache)} if feature_cache else {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Resume what a previous runtime left in progress."""
        self._stopping.clear()
        for name in self.store.names("tuning-job", "InProgress"):
            self._spawn(self._run_tuning_job, name)
        for name, status, record in self.store.records("training-job"):
            if status == "InProgress" and not record.get("TuningJobName"):
                self._spawn(self._run_training_job, name)

    def stop(self, timeout: float = 30) -> None:
        """End running jobs (their process groups) and wait for the threads; the store keeps them
        in progress, so the next start resumes them."""
        self._stopping.set()
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            _kill(process)
        deadline = time.time() + timeout
        for thread in list(self._threads):
            thread.join(max(0.1, deadline - time.time()))

    def _spawn(self, target: Callable, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(target, *args), daemon=True, name=f"{target.__name__}:{args[0]}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _guard(self, target: Callable, *args: Any) -> None:
        try:
            target(*args)
        except Exception:  # noqa: BLE001 - a job thread must record its failure, not vanish
            log.exception("local job %s crashed", args[0])

    # -- training jobs -----------------------------------------------------------------------

    def create_training_job(self, request: Mapping[str, Any]) -> bool:
        return self._create_training_job(dict(request), tuning_job=None)

    def _create_training_job(self, request: dict[str, Any], tuning_job: str | None, trial: int | None = None) -> bool:
        name = request["TrainingJobName"]
        record = {
            "TrainingJobName": name, "TrainingJobArn": arn("training-job", name),
            "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting",
            "HyperParameters": request.get("HyperParameters", {}),
            "AlgorithmSpecification": request["AlgorithmSpecification"], "RoleArn": request["RoleArn"],
            "InputDataConfig": request.get("InputDataConfig", []), "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"], "StoppingCondition": request["StoppingCondition"],
            "Environment": request.get("Environment", {}),
            "CreationTime": now(), "LastModifiedTime": now(), "Tags": _tags(request),
        }
        if request.get("CheckpointConfig"):
            record["CheckpointConfig"] = request["CheckpointConfig"]
        if tuning_job:
            record.update(TuningJobArn=arn("hyper-parameter-tuning-job", tuning_job), TuningJobName=tuning_job, Trial=trial)
        if not self.store.insert("training-job", name, record, status="InProgress"):
            return False
        if not tuning_job:
            self._spawn(self._run_training_job, name)
        return True

    def describe_training_job(self, name: str) -> dict[str, Any]:
        record = self.store.get("training-job", name)
        if record is None:
            raise NotFoundError(f"Could not find training job '{arn('training-job', name)}'", "ValidationException")
        return as_described(record, hidden=("Tags", "TuningJobName", "Trial"))

    def _local_file(self, uri: str, what: str) -> Path:
        path = self.bucket.path_of_uri(uri)
        if not path.exists():
            raise jobs.JobSetupError(f"ClientError: no {what} at {uri}")
        return path

    def _prepare(self, name: str, record: Mapping[str, Any]) -> jobs.JobPaths:
        """The job's /opt/ml as SageMaker lays it out before the container starts."""
        paths = jobs.JobPaths(self.jobs_root / name)
        hyperparameters = dict(record["HyperParameters"])
        if "sagemaker_submit_directory" in hyperparameters:
            hyperparameters["sagemaker_submit_directory"] = str(
                self._local_file(hyperparameters["sagemaker_submit_directory"], "training code"))
        for channel in record["InputDataConfig"]:
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            jobs.stage_channel(paths, channel["ChannelName"], self._local_file(uri, "data"))
        jobs.write_config(paths, hyperparameters, record["InputDataConfig"], record["ResourceConfig"]["InstanceType"],
                          record.get("CheckpointConfig"))
        for stale in (paths.failure, paths.output / "success"):  # from an attempt a restart interrupted
            stale.unlink(missing_ok=True)
        return paths

    def _run_training_job(self, name: str, on_metric: Callable[[str, float, int], bool] | None = None) -> str:
        """Run the job to its end; returns its final status. ``on_metric`` returning ``True`` stops it (pruning)."""
        record = self.store.get("training-job", name)
        definitions = [(d["Name"], re.compile(d["Regex"])) for d in record["AlgorithmSpecification"].get("MetricDefinitions", [])]
        hyperparameters = record["HyperParameters"]
        metrics: dict[str, list[float]] = {n: [] for n, _ in definitions}
        pruned = False
        try:
            paths = self._prepare(name, record)
        except (jobs.JobSetupError, OSError) as exc:
            return self._finish_training(name, "Failed", FailureReason=str(exc))
        self.store.update("training-job", name, SecondaryStatus="Training", TrainingStartTime=now(), LastModifiedTime=now())
        env = jobs.toolkit_env(paths, name, record["TrainingJobArn"], record.get("Environment", {}), extra=self.job_env)
        process = jobs.start(paths, env)
        with self._lock:
            self._processes[name] = process
        tail: list[str] = []
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                tail = (tail + [line])[-20:]
                self.on_line(name, line)
                for metric, pattern in definitions:
                    match = pattern.search(line)
                    if match:
                        value = float(match.group(1))
                        metrics[metric].append(value)
                        if on_metric and on_metric(metric, value, len(metrics[metric])) and not pruned:
                            pruned = True
                            _kill(process)
            status_code = process.wait()
        finally:
            with self._lock:
                self._processes.pop(name, None)
        final_metrics = [{"MetricName": n, "Value": v[-1], "Timestamp": now()} for n, v in metrics.items() if v]
        self.store.update("training-job", name, FinalMetricDataList=final_metrics)
        if self._stopping.is_set() and not pruned:
            return "InProgress"  # the runtime is stopping: the job stays in progress and resumes next start
        if pruned:
            return self._finish_training(name, "Stopped", SecondaryStatus="Stopped", FailureReason="stopped early by the tuning job")
        if status_code != 0:
            reason = jobs.failure_reason(paths, status_code, tail)
            return self._finish_training(name, "Failed", SecondaryStatus="Failed", FailureReason=reason)
        prefix = record["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
        model_uri = f"{prefix}/model.tar.gz"
        jobs.package_dir(paths.model, self.bucket.path_of_uri(model_uri))
        jobs.package_dir(paths.output_data, self.bucket.path_of_uri(f"{prefix}/output.tar.gz"))
        reports = paths.output_data / "reports"
        if hyperparameters.get("reports-uri") and reports.is_dir():
            # What train.py uploads itself on SageMaker (runs/<run-id>/reports/).
            target = hyperparameters["reports-uri"].rstrip("/")
            for path in sorted(reports.iterdir()):
                self.bucket.put_file(self.bucket.key_of(self.bucket.path_of_uri(f"{target}/{path.name}")), path)
        return self._finish_training(name, "Completed", SecondaryStatus="Completed", ModelArtifacts={"S3ModelArtifacts": model_uri})

    def _finish_training(self, name: str, status: str, **changes: Any) -> str:
        changes.update(TrainingJobStatus=status, TrainingEndTime=now(), LastModifiedTime=now())
        if self.store.transition("training-job", name, ("InProgress",), status, **changes):
            record = self.store.get("training-job", name)
            detail = {k: record[k] for k in ("TrainingJobName", "TrainingJobArn", "TrainingJobStatus", "SecondaryStatus",
                                             "HyperParameters", "OutputDataConfig") if k in record}
            detail["Tags"] = record.get("Tags", {})
            for key in ("ModelArtifacts", "FailureReason", "TuningJobArn"):
                if key in record:
                    detail[key] = record[key]
            self.emit(_event("SageMaker Training Job State Change", "training-job", name, detail))
        return status

    # -- tuning jobs -------------------------------------------------------------------------

    def create_tuning_job(self, request: Mapping[str, Any]) -> bool:
        name = request["HyperParameterTuningJobName"]
        record = {
            "HyperParameterTuningJobName": name, "HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name),
            "HyperParameterTuningJobConfig": request["HyperParameterTuningJobConfig"],
            "TrainingJobDefinition": request["TrainingJobDefinition"],
            "HyperParameterTuningJobStatus": "InProgress", "CreationTime": now(), "LastModifiedTime": now(),
            "Tags": _tags(request),
        }
        if not self.store.insert("tuning-job", name, record, status="InProgress"):
            return False
        self._spawn(self._run_tuning_job, name)
        return True

    def describe_tuning_job(self, name: str) -> dict[str, Any]:
        record = self.store.get("tuning-job", name)
        if record is None:
            raise NotFoundError(f"Could not find hyper parameter tuning job '{name}'", "ResourceNotFound")
        return as_described({**record, **self._counters(name)}, hidden=("Tags",))

    def _children(self, name: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        return [(n, s, r) for n, s, r in self.store.records("training-job") if r.get("TuningJobName") == name]

    def _counters(self, name: str) -> dict[str, Any]:
        children = self._children(name)
        statuses = [s for _, s, _ in children]
        objective = self.store.get("tuning-job", name)["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
        succeeded = sum(1 for _, s, r in children if s == "Completed" and _final(r, objective) is not None)
        return {
            "TrainingJobStatusCounters": {"Completed": statuses.count("Completed"), "InProgress": statuses.count("InProgress"),
                                          "RetryableError": 0, "NonRetryableError": statuses.count("Failed"),
                                          "Stopped": statuses.count("Stopped")},
            "ObjectiveStatusCounters": {"Succeeded": succeeded, "Pending": statuses.count("InProgress"),
                                        "Failed": len(children) - succeeded - statuses.count("InProgress")},
        }

    def _run_tuning_job(self, name: str) -> None:
        record = self.store.get("tuning-job", name)
        config = record["HyperParameterTuningJobConfig"]
        definition = record["TrainingJobDefinition"]
        objective = config["HyperParameterTuningJobObjective"]
        distributions = _distributions(config["ParameterRanges"])
        study = optuna.create_study(
            direction="maximize" if objective["Type"] == "Maximize" else "minimize",
            sampler=_sampler(config, distributions, seed=int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)),
            pruner=_pruner(config),
        )
        limits = config["ResourceLimits"]
        max_jobs = limits.get("MaxNumberOfTrainingJobs") or _grid_size(distributions)
        parallel = max(1, limits["MaxParallelTrainingJobs"])
        running: dict[str, tuple[threading.Thread, optuna.trial.Trial]] = {}

        # Replay what a previous runtime finished; relaunch what it left running.
        launched = 0
        for child, status, child_record in self._children(name):
            launched += 1
            params = {k: _typed(child_record["HyperParameters"][k], distributions[k]) for k in distributions}
            if status in TERMINAL:
                value = _final(child_record, objective["MetricName"])
                state = optuna.trial.TrialState.COMPLETE if status == "Completed" and value is not None else (
                    optuna.trial.TrialState.PRUNED if status == "Stopped" else optuna.trial.TrialState.FAIL)
                study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, state=state,
                                                          value=value if state == optuna.trial.TrialState.COMPLETE else None))
            else:
                study.enqueue_trial(params)  # the relaunched trial keeps its values
                trial = study.ask(distributions)
                running[child] = (self._spawn(self._run_trial, child, study, trial, objective["MetricName"]), trial)

        while not self._stopping.is_set():
            running = {k: v for k, v in running.items() if v[0].is_alive()}
            if launched >= max_jobs and not running:
                break
            if launched < max_jobs and len(running) < parallel:
                trial = study.ask(distributions)
                launched += 1
                child = f"{name}-{launched:03d}-{hashlib.sha256(f'{name}/{launched}'.encode()).hexdigest()[:8]}"
                hyperparameters = {**definition.get("StaticHyperParameters", {}),
                                   **{k: _text(v) for k, v in trial.params.items()},
                                   "_tuning_objective_metric": objective["MetricName"]}
                request = {k: v for k, v in definition.items() if k != "StaticHyperParameters"}
                request.update(TrainingJobName=child, HyperParameters=hyperparameters)
                if "CheckpointConfig" in request:
                    request["CheckpointConfig"] = dict(request["CheckpointConfig"])
                self._create_training_job(request, tuning_job=name, trial=trial.number)
                running[child] = (self._spawn(self._run_trial, child, study, trial, objective["MetricName"]), trial)
                continue
            time.sleep(0.2)
        if self._stopping.is_set():
            return
        self._finish_tuning(name, objective)

    def _run_trial(self, child: str, study: optuna.Study, trial: optuna.trial.Trial, objective: str) -> None:
        def report(metric: str, value: float, step: int) -> bool:
            if metric != objective:
                return False
            trial.report(value, step)
            return trial.should_prune()

        status = self._run_training_job(child, on_metric=report)
        if status == "InProgress":
            return  # the runtime is stopping; the next start relaunches this trial
        value = _final(self.store.get("training-job", child), objective)
        if status == "Completed" and value is not None:
            study.tell(trial, value)
        elif status == "Stopped":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _finish_tuning(self, name: str, objective: Mapping[str, Any]) -> None:
        best_name, best_value = None, None
        maximize = objective["Type"] == "Maximize"
        for child, status, record in self._children(name):
            value = _final(record, objective["MetricName"])
            if status == "Completed" and value is not None and (
                    best_value is None or (value > best_value if maximize else value < best_value)):
                best_name, best_value = child, value
        changes: dict[str, Any] = {"HyperParameterTuningEndTime": now(), "LastModifiedTime": now()}
        if best_name:
            best = self.store.get("training-job", best_name)
            tuned = self.store.get("tuning-job", name)["HyperParameterTuningJobConfig"]["ParameterRanges"]
            names = {r["Name"] for ranges in tuned.values() for r in ranges}
            changes["BestTrainingJob"] = {
                "TrainingJobName": best_name, "TrainingJobArn": best["TrainingJobArn"], "CreationTime": best["CreationTime"],
                "TrainingJobStatus": "Completed",
                "TunedHyperParameters": {k: v for k, v in best["HyperParameters"].items() if k in names},
                "FinalHyperParameterTuningJobObjectiveMetric": {"Type": objective["Type"], "MetricName": objective["MetricName"], "Value": best_value},
                "ObjectiveStatus": "Succeeded",
            }
            status = "Completed"
        else:
            status = "Failed"
            changes["FailureReason"] = "No training job succeeded: every trial failed or was stopped"
        changes["HyperParameterTuningJobStatus"] = status
        if self.store.transition("tuning-job", name, ("InProgress",), status, **changes):
            record = self.store.get("tuning-job", name)
            detail = {"HyperParameterTuningJobName": name, "HyperParameterTuningJobArn": record["HyperParameterTuningJobArn"],
                      "HyperParameterTuningJobStatus": status, **self._counters(name),
                      "BestTrainingJob": record.get("BestTrainingJob", {}), "Tags": record.get("Tags", {})}
            self.emit(_event("SageMaker HyperParameter Tuning Job State Change", "hyper-parameter-tuning-job", name, detail))

    # -- models, endpoints, tags --------------------------------------------------------------

    def create_model(self, request: Mapping[str, Any]) -> bool:
        return self.store.insert("model", request["ModelName"], {**request, "ModelArn": arn("model", request["ModelName"]),
                                                                  "CreationTime": now()})

    def create_endpoint_config(self, request: Mapping[str, Any]) -> bool:
        name = request["EndpointConfigName"]
        return self.store.insert("endpoint-config", name, {**request, "EndpointConfigArn": arn("endpoint-config", name),
                                                           "CreationTime": now()})

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        return self.endpoints.describe(name)

    def create_endpoint(self, request: Mapping[str, Any]) -> bool:
        return self.endpoints.create(request["EndpointName"], request["EndpointConfigName"], _tags(request))

    def delete_endpoint(self, name: str) -> None:
        self.endpoints.delete(name)

    def update_endpoint(self, request: Mapping[str, Any]) -> None:
        self.endpoints.update(request["EndpointName"], request["EndpointConfigName"])

    def add_tags(self, resource_arn: str, tags: list[dict[str, str]]) -> None:
        kind, name = _parse_arn(resource_arn)
        record = self.store.get(kind, name)
        if record is None:
            raise NotFoundError(f"no {kind} {name}", "ValidationException")
        self.store.update(kind, name, Tags={**record.get("Tags", {}), **{t["Key"]: t["Value"] for t in tags}})

    def delete_tags(self, resource_arn: str, keys: list[str]) -> None:
        kind, name = _parse_arn(resource_arn)
        record = self.store.get(kind, name) or {}
        self.store.update(kind, name, Tags={k: v for k, v in record.get("Tags", {}).items() if k not in keys})

    def list_tags(self, resource_arn: str) -> dict[str, str]:
        kind, name = _parse_arn(resource_arn)
        record = self.store.get(kind, name)
        if record is None:
            raise NotFoundError(f"no {kind} {name}", "ValidationException")
        return dict(record.get("Tags", {}))


# -- helpers -------------------------------------------------------------------------------------


def _parse_arn(resource_arn: str) -> tuple[str, str]:
    kind, _, name = resource_arn.rsplit(":", 1)[1].partition("/")
    return ("tuning-job" if kind == "hyper-parameter-tuning-job" else kind), name


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _final(record: Mapping[str, Any] | None, metric: str) -> float | None:
    for item in (record or {}).get("FinalMetricDataList", []):
        if item["MetricName"] == metric:
            return float(item["Value"])
    return None


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _typed(text: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return int(float(text))
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return float(text)
    return text


def _distributions(ranges: Mapping[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for r in ranges.get("ContinuousParameterRanges", []):
        out[r["Name"]] = optuna.distributions.FloatDistribution(float(r["MinValue"]), float(r["MaxValue"]),
                                                                log=r.get("ScalingType") == "Logarithmic")
    for r in ranges.get("IntegerParameterRanges", []):
        out[r["Name"]] = optuna.distributions.IntDistribution(int(r["MinValue"]), int(r["MaxValue"]),
                                                              log=r.get("ScalingType") == "Logarithmic")
    for r in ranges.get("CategoricalParameterRanges", []):
        out[r["Name"]] = optuna.distributions.CategoricalDistribution(list(r["Values"]))
    return out


def _grid_size(distributions: Mapping[str, Any]) -> int:
    return math.prod(len(d.choices) for d in distributions.values() if isinstance(d, optuna.distributions.CategoricalDistribution))


def _sampler(config: Mapping[str, Any], distributions: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    strategy = config["Strategy"]
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "Grid":
        return optuna.samplers.GridSampler({k: list(d.choices) for k, d in distributions.items()}, seed=seed)
    # Bayesian (and Hyperband's sampler): TPE, with a few random trials to start from.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)


def _pruner(config: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    if config["Strategy"] == "Hyperband":
        hb = config.get("StrategyConfig", {}).get("HyperbandStrategyConfig", {})
        return optuna.pruners.HyperbandPruner(min_resource=hb.get("MinResource", 1), max_resource=hb.get("MaxResource", 10))
    if config.get("TrainingJobEarlyStoppingType") == "Auto":
        # SageMaker's automatic early stopping is a median rule too; early epochs are noisy, so
        # nothing is stopped before its third epoch or before three trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return optuna.pruners.NopPruner()
