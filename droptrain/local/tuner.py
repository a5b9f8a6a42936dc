"""Local hyperparameter tuning jobs, searched with Optuna, their trials run as local training jobs.

Strategies as SageMaker's: TPE for Bayesian, random, grid, and Hyperband pruning on the per-epoch
objective (median-rule pruning for ``TrainingJobEarlyStoppingType: Auto``), within
MaxNumberOfTrainingJobs and MaxParallelTrainingJobs. Everything is in the store, so a restarted
runtime picks up where it stopped: finished trials are replayed into the study, interrupted ones run
again with their hyperparameters and resume from their checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from typing import Any, Callable, Mapping

import optuna

from chalice_app.adapters.errors import NotFoundError
from droptrain.local.resources import arn, as_described, now, request_tags, state_change_event
from droptrain.local.store import Store
from droptrain.local.training import TrainingJobs

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
TERMINAL = ("Completed", "Failed", "Stopped")
Spawn = Callable[..., threading.Thread]


def final_metric(record: Mapping[str, Any] | None, metric: str) -> float | None:
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


def distributions_of(ranges: Mapping[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
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


class _AskAndTellGrid(optuna.samplers.GridSampler):
    """Optuna's grid for ask-and-tell: the tuning loop ends the grid itself (it knows its size), and
    the sampler's own ``study.stop()`` at the last point works only inside ``optimize()``."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def _sampler(config: Mapping[str, Any], distributions: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    strategy = config["Strategy"]
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "Grid":
        return _AskAndTellGrid({k: list(d.choices) for k, d in distributions.items()}, seed=seed)
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


class Tuner:
    def __init__(self, store: Store, training: TrainingJobs, emit: Callable[[dict], None], spawn: Spawn,
                 stopping: threading.Event):
        self.store, self.training, self.emit, self.spawn, self.stopping = store, training, emit, spawn, stopping

    def create(self, request: Mapping[str, Any]) -> bool:
        name = request["HyperParameterTuningJobName"]
        record = {
            "HyperParameterTuningJobName": name, "HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name),
            "HyperParameterTuningJobConfig": request["HyperParameterTuningJobConfig"],
            "TrainingJobDefinition": request["TrainingJobDefinition"],
            "HyperParameterTuningJobStatus": "InProgress", "CreationTime": now(), "LastModifiedTime": now(),
            "Tags": request_tags(request),
        }
        return self.store.insert("tuning-job", name, record, status="InProgress")

    def describe(self, name: str) -> dict[str, Any]:
        record = self.store.get("tuning-job", name)
        if record is None:
            raise NotFoundError(f"Could not find hyper parameter tuning job '{name}'", "ResourceNotFound")
        return as_described({**record, **self.counters(name)}, hidden=("Tags",))

    def children(self, name: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        return [(n, s, r) for n, s, r in self.store.records("training-job") if r.get("TuningJobName") == name]

    def counters(self, name: str) -> dict[str, Any]:
        children = self.children(name)
        statuses = [s for _, s, _ in children]
        objective = self.store.get("tuning-job", name)["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
        succeeded = sum(1 for _, s, r in children if s == "Completed" and final_metric(r, objective) is not None)
        return {
            "TrainingJobStatusCounters": {"Completed": statuses.count("Completed"), "InProgress": statuses.count("InProgress"),
                                          "RetryableError": 0, "NonRetryableError": statuses.count("Failed"),
                                          "Stopped": statuses.count("Stopped")},
            "ObjectiveStatusCounters": {"Succeeded": succeeded, "Pending": statuses.count("InProgress"),
                                        "Failed": len(children) - succeeded - statuses.count("InProgress")},
        }

    # -- the search --------------------------------------------------------------------------------

    def run(self, name: str) -> None:
        search = _Search(self, name)
        search.replay()
        if search.run() and not self.stopping.is_set():
            self.finish(name)

    def finish(self, name: str, reason: str | None = None) -> None:
        record = self.store.get("tuning-job", name)
        config = record["HyperParameterTuningJobConfig"]
        objective = config["HyperParameterTuningJobObjective"]
        best = self._best(name, objective)
        changes: dict[str, Any] = {"HyperParameterTuningEndTime": now(), "LastModifiedTime": now()}
        if best and not reason:
            tuned = {r["Name"] for ranges in config["ParameterRanges"].values() for r in ranges}
            changes["BestTrainingJob"] = {
                "TrainingJobName": best["TrainingJobName"], "TrainingJobArn": best["TrainingJobArn"],
                "CreationTime": best["CreationTime"], "TrainingJobStatus": "Completed",
                "TunedHyperParameters": {k: v for k, v in best["HyperParameters"].items() if k in tuned},
                "FinalHyperParameterTuningJobObjectiveMetric": {"Type": objective["Type"], "MetricName": objective["MetricName"],
                                                                "Value": final_metric(best, objective["MetricName"])},
                "ObjectiveStatus": "Succeeded",
            }
            status = "Completed"
        else:
            status = "Failed"
            changes["FailureReason"] = reason or "No training job succeeded: every trial failed or was stopped"
        changes["HyperParameterTuningJobStatus"] = status
        if self.store.transition("tuning-job", name, ("InProgress",), status, **changes):
            record = self.store.get("tuning-job", name)
            detail = {"HyperParameterTuningJobName": name, "HyperParameterTuningJobArn": record["HyperParameterTuningJobArn"],
                      "HyperParameterTuningJobStatus": status, **self.counters(name),
                      "BestTrainingJob": record.get("BestTrainingJob", {}), "Tags": record.get("Tags", {})}
            if "FailureReason" in record:
                detail["FailureReason"] = record["FailureReason"]
            self.emit(state_change_event("SageMaker HyperParameter Tuning Job State Change", "hyper-parameter-tuning-job", name, detail))

    def _best(self, name: str, objective: Mapping[str, Any]) -> dict[str, Any] | None:
        sign = 1 if objective["Type"] == "Maximize" else -1
        scored = [(sign * value, record) for _, status, record in self.children(name)
                  if status == "Completed" and (value := final_metric(record, objective["MetricName"])) is not None]
        return max(scored, key=lambda item: item[0])[1] if scored else None


class _Search:
    """One tuning job's study: its trials launched within the limits, waited for on a condition."""

    def __init__(self, tuner: Tuner, name: str):
        self.tuner, self.name = tuner, name
        record = tuner.store.get("tuning-job", name)
        self.config, self.definition = record["HyperParameterTuningJobConfig"], record["TrainingJobDefinition"]
        self.objective = self.config["HyperParameterTuningJobObjective"]
        self.distributions = distributions_of(self.config["ParameterRanges"])
        self.study = optuna.create_study(
            direction="maximize" if self.objective["Type"] == "Maximize" else "minimize",
            sampler=_sampler(self.config, self.distributions, seed=int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)),
            pruner=_pruner(self.config))
        limits = self.config["ResourceLimits"]
        self.max_jobs = limits.get("MaxNumberOfTrainingJobs") or math.prod(
            len(d.choices) for d in self.distributions.values() if isinstance(d, optuna.distributions.CategoricalDistribution))
        self.parallel = max(1, limits["MaxParallelTrainingJobs"])
        self.launched = 0
        self.running: set[str] = set()
        self.changed = threading.Condition()

    def replay(self) -> None:
        """What a previous runtime finished goes into the study; what it left running runs again."""
        for child, status, record in self.tuner.children(self.name):
            self.launched += 1
            params = {k: _typed(record["HyperParameters"][k], d) for k, d in self.distributions.items()}
            if status in TERMINAL:
                value = final_metric(record, self.objective["MetricName"])
                state = (optuna.trial.TrialState.COMPLETE if status == "Completed" and value is not None
                         else optuna.trial.TrialState.PRUNED if status == "Stopped" else optuna.trial.TrialState.FAIL)
                self.study.add_trial(optuna.trial.create_trial(params=params, distributions=self.distributions, state=state,
                                                               value=value if state == optuna.trial.TrialState.COMPLETE else None))
            else:
                self.study.enqueue_trial(params)  # the relaunched trial keeps its values
                with self.changed:
                    self._start(child, self.study.ask(self.distributions))

    def run(self) -> bool:
        """Launch and wait until every trial has run; ``False`` if the runtime stopped first."""
        with self.changed:
            while not self.tuner.stopping.is_set():
                if self.launched >= self.max_jobs and not self.running:
                    return True
                if self.launched < self.max_jobs and len(self.running) < self.parallel:
                    self._launch()
                    continue
                self.changed.wait(1.0)  # a trial ending (or the runtime stopping) wakes it
        return False

    def _launch(self) -> None:
        trial = self.study.ask(self.distributions)
        self.launched += 1
        child = f"{self.name}-{self.launched:03d}-{hashlib.sha256(f'{self.name}/{self.launched}'.encode()).hexdigest()[:8]}"
        hyperparameters = {**self.definition.get("StaticHyperParameters", {}),
                           **{k: _text(v) for k, v in trial.params.items()},
                           "_tuning_objective_metric": self.objective["MetricName"]}
        request = {k: v for k, v in self.definition.items() if k != "StaticHyperParameters"}
        request.update(TrainingJobName=child, HyperParameters=hyperparameters)
        self.tuner.training.create(request, tuning_job=self.name, trial=trial.number)
        self._start(child, trial)

    def _start(self, child: str, trial: optuna.trial.Trial) -> None:
        self.running.add(child)
        self.tuner.spawn(self._trial, child, trial)

    def _trial(self, child: str, trial: optuna.trial.Trial) -> None:
        metric = self.objective["MetricName"]

        def report(name: str, value: float, step: int) -> bool:
            if name != metric:
                return False
            trial.report(value, step)
            return trial.should_prune()

        try:
            status = self.tuner.training.run(child, on_metric=report)
            if status != "InProgress":  # InProgress: the runtime is stopping; the next start relaunches it
                value = final_metric(self.tuner.store.get("training-job", child), metric)
                if status == "Completed" and value is not None:
                    self.study.tell(trial, value)
                else:
                    self.study.tell(trial, state=optuna.trial.TrialState.PRUNED if status == "Stopped" else optuna.trial.TrialState.FAIL)
        finally:
            with self.changed:
                self.running.discard(child)
                self.changed.notify_all()
