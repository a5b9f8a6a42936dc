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

from chalice_app.adapters.errors import NotFoundError
from droptrain.local.sagemaker.resources import arn, as_described, now, request_tags, state_change_event
from droptrain.local.sagemaker.search import Search, final_metric
from droptrain.local.sagemaker.training import TrainingJobs
from droptrain.local.store import Store

Spawn = Callable[..., threading.Thread]


class Tuner:
    def __init__(self, store: Store, training: TrainingJobs, emit: Callable[[dict], None], spawn: Spawn,
                 stopping: threading.Event):
        self.store, self.training, self.emit, self.spawn, self.stopping = store, training, emit, spawn, stopping
        self._searches: dict[str, Search] = {}
        self._searches_lock = threading.Lock()

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
        if record.get("StopRequested") and record["HyperParameterTuningJobStatus"] == "InProgress":
            record["HyperParameterTuningJobStatus"] = "Stopping"
        return as_described({**record, **self.counters(name)}, hidden=("Tags", "StopRequested"))

    def stop(self, name: str) -> bool:
        """StopHyperParameterTuningJob: no new trial starts, running ones are stopped, the job ends
        Stopped. ``False`` when it had already ended."""
        record = self.store.get("tuning-job", name)
        if record is None:
            raise NotFoundError(f"Could not find hyper parameter tuning job '{name}'", "ResourceNotFound")
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
        if self.store.get("tuning-job", name) is None:
            raise NotFoundError(f"Could not find hyper parameter tuning job '{name}'", "ResourceNotFound")
        config = self.store.get("tuning-job", name)["HyperParameterTuningJobConfig"]
        tuned = {r["Name"] for ranges in config["ParameterRanges"].values() for r in ranges}
        objective = config["HyperParameterTuningJobObjective"]
        out = []
        for child, status, record in self.children(name):
            summary = {"TrainingJobName": child, "TrainingJobArn": record["TrainingJobArn"], "TuningJobName": name,
                       "CreationTime": record["CreationTime"], "TrainingJobStatus": status,
                       "TunedHyperParameters": {k: v for k, v in record["HyperParameters"].items() if k in tuned}}
            for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
                if key in record:
                    summary[key] = record[key]
            value = final_metric(record, objective["MetricName"])
            if value is not None:
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": objective["MetricName"], "Value": value}
            summary["ObjectiveStatus"] = "Succeeded" if status == "Completed" and value is not None else \
                "Pending" if status == "InProgress" else "Failed"
            out.append(as_described(summary))
        return out

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
        search = Search(self, name)
        with self._searches_lock:
            self._searches[name] = search
        try:
            search.replay()
            if search.run() and not self.stopping.is_set():
                self.finish(name, stopped=bool(self.store.get("tuning-job", name).get("StopRequested")))
        finally:
            with self._searches_lock:
                self._searches.pop(name, None)

    def finish(self, name: str, reason: str | None = None, stopped: bool = False) -> None:
        record = self.store.get("tuning-job", name)
        config = record["HyperParameterTuningJobConfig"]
        objective = config["HyperParameterTuningJobObjective"]
        best = self._best(name, objective)
        changes: dict[str, Any] = {"HyperParameterTuningEndTime": now(), "LastModifiedTime": now()}
        if stopped:
            status = "Stopped"
        elif best and not reason:
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


