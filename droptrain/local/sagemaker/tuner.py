"""Local hyperparameter tuning jobs: CreateHyperParameterTuningJob's request in, DescribeHyperParameterTuningJob,
ListTrainingJobsForHyperParameterTuningJob and StopHyperParameterTuningJob, and "SageMaker HyperParameter
Tuning Job State Change" events out. The search itself is ``droptrain.local.sagemaker.search`` (Optuna); its
trials run as local training jobs.

Everything is in the store, so a restarted runtime picks up where it stopped: finished trials are
replayed into the study, interrupted ones run again with their hyperparameters and resume from
their checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from droptrain.local.sagemaker.lifecycle import JobKind, Jobs
from droptrain.local.sagemaker.resources import as_described, now, request_tags
from droptrain.local.sagemaker.search import Search, final_metric
from droptrain.local.sagemaker.training import TrainingJobs
from droptrain.local.store import Store

Spawn = Callable[..., threading.Thread]


TUNING = JobKind(
    store_kind="tuning-job",
    arn_kind="hyper-parameter-tuning-job",
    prefix="HyperParameterTuningJob",
    end_field="HyperParameterTuningEndTime",
    detail_type="SageMaker HyperParameter Tuning Job State Change",
    hidden=("Tags", "StopRequested"),
    missing="Could not find hyper parameter tuning job '{name}'",
    missing_code="ResourceNotFound",
)


class Tuner(Jobs):
    """Its trials are training jobs: a stop is a flag the search reads, not a process to end."""

    kind = TUNING

    def __init__(
        self,
        store: Store,
        training: TrainingJobs,
        emit: Callable[[dict], None],
        spawn: Spawn,
        stopping: threading.Event,
    ):
        super().__init__(store, emit)
        self.training, self.spawn, self.stopping = training, spawn, stopping
        self._searches: dict[str, Search] = {}
        self._searches_lock = threading.Lock()

    def create(self, request: Mapping[str, Any]) -> bool:
        return self.insert(
            request["HyperParameterTuningJobName"],
            {
                "HyperParameterTuningJobConfig": request["HyperParameterTuningJobConfig"],
                "TrainingJobDefinition": request["TrainingJobDefinition"],
                "Tags": request_tags(request),
            },
        )

    def describe(self, name: str) -> dict[str, Any]:
        record = self.record(name)
        if record.get("StopRequested") and record["HyperParameterTuningJobStatus"] == "InProgress":
            record["HyperParameterTuningJobStatus"] = "Stopping"
        return as_described({**record, **self.counters(name)}, hidden=self.kind.hidden)

    def stop(self, name: str) -> bool:
        """StopHyperParameterTuningJob: no new trial starts, running ones are stopped, the job ends
        Stopped. ``False`` when it had already ended."""
        self.record(name)
        if self.store.status("tuning-job", name) != "InProgress":
            return False
        self.store.update("tuning-job", name, StopRequested=True, LastModifiedTime=now())
        with self._searches_lock:
            search = self._searches.get(name)
        if search is not None:
            search.wake()
        return True

    def trials(self, name: str) -> list[dict[str, Any]]:
        """ListTrainingJobsForHyperParameterTuningJob: its children as HyperParameterTrainingJobSummary."""
        config = self.record(name)["HyperParameterTuningJobConfig"]
        tuned = {r["Name"] for ranges in config["ParameterRanges"].values() for r in ranges}
        objective = config["HyperParameterTuningJobObjective"]
        out = []
        for child, status, record in self.children(name):
            summary = {
                "TrainingJobName": child,
                "TrainingJobArn": record["TrainingJobArn"],
                "TuningJobName": name,
                "CreationTime": record["CreationTime"],
                "TrainingJobStatus": status,
                "TunedHyperParameters": {k: v for k, v in record["HyperParameters"].items() if k in tuned},
            }
            for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
                if key in record:
                    summary[key] = record[key]
            value = final_metric(record, objective["MetricName"])
            if value is not None:
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "MetricName": objective["MetricName"],
                    "Value": value,
                }
            summary["ObjectiveStatus"] = (
                "Succeeded"
                if status == "Completed" and value is not None
                else "Pending"
                if status == "InProgress"
                else "Failed"
            )
            out.append(as_described(summary))
        return out

    def children(self, name: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        return [(n, s, r) for n, s, r in self.store.records("training-job") if r.get("TuningJobName") == name]

    def counters(self, name: str) -> dict[str, Any]:
        children = self.children(name)
        statuses = [s for _, s, _ in children]
        objective = self.store.get("tuning-job", name)["HyperParameterTuningJobConfig"][
            "HyperParameterTuningJobObjective"
        ]["MetricName"]
        succeeded = sum(1 for _, s, r in children if s == "Completed" and final_metric(r, objective) is not None)
        return {
            "TrainingJobStatusCounters": {
                "Completed": statuses.count("Completed"),
                "InProgress": statuses.count("InProgress"),
                "RetryableError": 0,
                "NonRetryableError": statuses.count("Failed"),
                "Stopped": statuses.count("Stopped"),
            },
            "ObjectiveStatusCounters": {
                "Succeeded": succeeded,
                "Pending": statuses.count("InProgress"),
                "Failed": len(children) - succeeded - statuses.count("InProgress"),
            },
        }

    # -- the search --------------------------------------------------------------------------------

    def run(self, name: str) -> None:
        search = Search(self, name)
        with self._searches_lock:
            self._searches[name] = search
        try:
            search.replay()
            if search.run() and not self.stopping.is_set():
                self.end(name, stopped=bool(self.store.get("tuning-job", name).get("StopRequested")))
        finally:
            with self._searches_lock:
                self._searches.pop(name, None)

    def end(self, name: str, reason: str | None = None, stopped: bool = False) -> None:
        """The search is over: Stopped, Completed with its best trial, or Failed with ``reason``."""
        record = self.store.get("tuning-job", name)
        config = record["HyperParameterTuningJobConfig"]
        objective = config["HyperParameterTuningJobObjective"]
        best = self._best(name, objective)
        changes: dict[str, Any] = {}
        if stopped:
            status = "Stopped"
        elif best and not reason:
            tuned = {r["Name"] for ranges in config["ParameterRanges"].values() for r in ranges}
            changes["BestTrainingJob"] = {
                "TrainingJobName": best["TrainingJobName"],
                "TrainingJobArn": best["TrainingJobArn"],
                "CreationTime": best["CreationTime"],
                "TrainingJobStatus": "Completed",
                "TunedHyperParameters": {k: v for k, v in best["HyperParameters"].items() if k in tuned},
                "FinalHyperParameterTuningJobObjectiveMetric": {
                    "Type": objective["Type"],
                    "MetricName": objective["MetricName"],
                    "Value": final_metric(best, objective["MetricName"]),
                },
                "ObjectiveStatus": "Succeeded",
            }
            status = "Completed"
        else:
            status = "Failed"
            changes["FailureReason"] = reason or "No training job succeeded: every trial failed or was stopped"
        self.finish(name, status, **changes)

    def detail(self, name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **super().detail(name, record),
            **self.counters(name),
            "BestTrainingJob": record.get("BestTrainingJob", {}),
            "Tags": record.get("Tags", {}),
        }

    def _best(self, name: str, objective: Mapping[str, Any]) -> dict[str, Any] | None:
        sign = 1 if objective["Type"] == "Maximize" else -1
        scored = [
            (sign * value, record)
            for _, status, record in self.children(name)
            if status == "Completed" and (value := final_metric(record, objective["MetricName"])) is not None
        ]
        return max(scored, key=lambda item: item[0])[1] if scored else None
