"""A tuning job's search: Optuna's study, the trials launched within the job's limits, waited for on
a condition.

Strategies as SageMaker's: TPE for Bayesian, random, grid, and Hyperband pruning on the per-epoch
objective (median-rule pruning for ``TrainingJobEarlyStoppingType: Auto``), within
MaxNumberOfTrainingJobs and MaxParallelTrainingJobs. No configuration is trained twice, across
restarts too: finished trials are replayed into the study, the sampler is reseeded past them, and a
proposal equal to a trained one is not run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from droptrain.local.sagemaker.lifecycle import TERMINAL

if TYPE_CHECKING:
    from droptrain.local.sagemaker.tuner import Tuner

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


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
        out[r["Name"]] = optuna.distributions.FloatDistribution(
            float(r["MinValue"]), float(r["MaxValue"]), log=r.get("ScalingType") == "Logarithmic"
        )
    for r in ranges.get("IntegerParameterRanges", []):
        out[r["Name"]] = optuna.distributions.IntDistribution(
            int(r["MinValue"]), int(r["MaxValue"]), log=r.get("ScalingType") == "Logarithmic"
        )
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
        return optuna.pruners.HyperbandPruner(
            min_resource=hb.get("MinResource", 1), max_resource=hb.get("MaxResource", 10)
        )
    if config.get("TrainingJobEarlyStoppingType") == "Auto":
        # SageMaker's automatic early stopping is a median rule too; early epochs are noisy, so
        # nothing is stopped before its third epoch or before three trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


def _seed(name: str, launched: int) -> int:
    # A restarted search samples from a fresh stream: the first one's seed would propose again the
    # configurations it already proposed (and trained) before the restart.
    return int(hashlib.sha256(f"{name}/{launched}".encode()).hexdigest()[:8], 16)


MAX_ASKS = 50  # proposals tried for a configuration not trained yet, before the space counts as spent


class Search:
    """One tuning job's study: its trials launched within the limits, waited for on a condition.
    No configuration is trained twice, across restarts too: finished trials are replayed into the
    study, the sampler is reseeded past them, and a proposal equal to a trained one is not run."""

    def __init__(self, tuner: Tuner, name: str):
        self.tuner, self.name = tuner, name
        record = tuner.store.get("tuning-job", name)
        self.config, self.definition = record["HyperParameterTuningJobConfig"], record["TrainingJobDefinition"]
        self.tags = [{"Key": k, "Value": v} for k, v in record.get("Tags", {}).items()]
        self.objective = self.config["HyperParameterTuningJobObjective"]
        self.distributions = distributions_of(self.config["ParameterRanges"])
        self.study = optuna.create_study(
            direction="maximize" if self.objective["Type"] == "Maximize" else "minimize",
            sampler=_sampler(self.config, self.distributions, seed=_seed(name, 0)),
            pruner=_pruner(self.config),
        )
        limits = self.config["ResourceLimits"]
        self.max_jobs = limits.get("MaxNumberOfTrainingJobs") or math.prod(
            len(d.choices)
            for d in self.distributions.values()
            if isinstance(d, optuna.distributions.CategoricalDistribution)
        )
        # One trial per GPU where there are GPUs (a trial beyond them would share one and slow both).
        gpus = tuner.training.gpus
        self.parallel = max(
            1, min(limits["MaxParallelTrainingJobs"], gpus) if gpus else limits["MaxParallelTrainingJobs"]
        )
        self.launched = 0
        self.running: set[str] = set()
        self.trained: set[tuple] = set()  # the tuned values of every trial launched, as SageMaker got them
        self.changed = threading.Condition()

    def _key(self, params: Mapping[str, Any]) -> tuple:
        return tuple(sorted((k, _text(v)) for k, v in params.items()))

    def replay(self) -> None:
        """What a previous runtime finished goes into the study; what it left running runs again."""
        for child, status, record in self.tuner.children(self.name):
            self.launched += 1
            params = {k: _typed(record["HyperParameters"][k], d) for k, d in self.distributions.items()}
            self.trained.add(self._key(params))
            if status in TERMINAL:
                value = final_metric(record, self.objective["MetricName"])
                state = (
                    optuna.trial.TrialState.COMPLETE
                    if status == "Completed" and value is not None
                    else optuna.trial.TrialState.PRUNED
                    if status == "Stopped"
                    else optuna.trial.TrialState.FAIL
                )
                self.study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions=self.distributions,
                        state=state,
                        value=value if state == optuna.trial.TrialState.COMPLETE else None,
                    )
                )
            else:
                self.study.enqueue_trial(params)  # the relaunched trial keeps its values
                with self.changed:
                    self._start(child, self.study.ask(self.distributions))
        if self.launched:
            self.study.sampler = _sampler(self.config, self.distributions, seed=_seed(self.name, self.launched))

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _stop_requested(self) -> bool:
        return bool(self.tuner.store.get("tuning-job", self.name).get("StopRequested"))

    def run(self) -> bool:
        """Launch and wait until every trial has run; ``False`` if the runtime stopped first."""
        with self.changed:
            while not self.tuner.stopping.is_set():
                if self._stop_requested():
                    self.max_jobs = self.launched
                    for child in self.running:
                        self.tuner.training.stop(child)
                if self.launched >= self.max_jobs and not self.running:
                    return True
                if self.launched < self.max_jobs and len(self.running) < self.parallel:
                    self._launch()
                    continue
                self.changed.wait(1.0)  # a trial ending, a stop, or the runtime stopping wakes it
        return False

    def _ask_untrained(self) -> optuna.trial.Trial | None:
        for _ in range(MAX_ASKS):
            trial = self.study.ask(self.distributions)
            if self._key(trial.params) not in self.trained:
                return trial
            # Already trained: the study learns nothing new from it, and no job runs for it.
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None

    def _launch(self) -> None:
        trial = self._ask_untrained()
        if trial is None:  # every configuration the space holds has been trained
            log.info("tuning job %s: no untrained configuration left after %d trials", self.name, self.launched)
            self.max_jobs = self.launched
            return
        self.launched += 1
        self.trained.add(self._key(trial.params))
        child = (
            f"{self.name}-{self.launched:03d}-{hashlib.sha256(f'{self.name}/{self.launched}'.encode()).hexdigest()[:8]}"
        )
        hyperparameters = {
            **self.definition.get("StaticHyperParameters", {}),
            **{k: _text(v) for k, v in trial.params.items()},
            "_tuning_objective_metric": self.objective["MetricName"],
        }
        request = {k: v for k, v in self.definition.items() if k != "StaticHyperParameters"}
        # SageMaker adds the tuning job's tags to every training job it launches.
        request.update(TrainingJobName=child, HyperParameters=hyperparameters, Tags=self.tags)
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
            status = self.tuner.training.run(child, on_metric=report, share=self.parallel)
            if status != "InProgress":  # InProgress: the runtime is stopping; the next start relaunches it
                value = final_metric(self.tuner.store.get("training-job", child), metric)
                if status == "Completed" and value is not None:
                    self.study.tell(trial, value)
                else:
                    self.study.tell(
                        trial,
                        state=optuna.trial.TrialState.PRUNED if status == "Stopped" else optuna.trial.TrialState.FAIL,
                    )
        finally:
            with self.changed:
                self.running.discard(child)
                self.changed.notify_all()
