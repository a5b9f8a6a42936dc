"""What every step works with, and the few reads they share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalice_app.adapters.errors import NotFoundError
from chalice_app.config import Config
from chalice_app.notifications import Notifier
from chalice_app.ports import Alarms, EndpointRuntime, ObjectStore, Prices, SageMaker

TERMINAL = ("Completed", "Failed", "Stopped")


@dataclass
class Services:
    """What a pipeline step works with: the stage's configuration and the ports (``chalice_app.ports``)."""

    config: Config
    s3: ObjectStore
    sagemaker: SageMaker
    runtime: EndpointRuntime
    notifier: Notifier
    sleep: Callable[[float], None]
    alarms: Alarms
    # What is broken in the stack itself, beyond AWS's services (the local runtime's own threads).
    problems: Callable[[], list[str]] = lambda: []
    prices: Prices | None = None  # None: no prices (the forecast says so)


def rule_verdicts(svc: Services, run: str) -> list[dict] | None:
    """The final job's debugger verdicts (``runs/<run-id>/reports/rules.json``), if it wrote them."""
    try:
        data = svc.s3.get(svc.config.data_bucket, f"runs/{run}/reports/rules.json")
    except NotFoundError:
        return None
    try:
        verdicts = json.loads(data)
        return [v for v in verdicts if isinstance(v, dict) and {"rule", "status"} <= set(v)]
    except (ValueError, TypeError):
        return None


def read_json(svc: Services, key: str) -> Any:
    """A JSON object the pipeline wrote or a job uploaded to the data bucket; ``None`` if absent or unreadable."""
    try:
        return json.loads(svc.s3.get(svc.config.data_bucket, key))
    except NotFoundError:
        return None
    except (ValueError, TypeError):
        return None


def dataset_of(description: dict[str, Any]) -> str | None:
    definition = description.get("TrainingJobDefinition", description)
    try:
        return definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    except (KeyError, IndexError, TypeError):
        return None


def prune_checkpoints(svc: Services, run: str, stage: str) -> int:
    """Nothing resumes a job that has ended: its spot checkpoints (``runs/<run>/checkpoints/<stage>/``,
    one file per trial and easily hundreds of MB each) are deleted. Returns how many."""
    if not svc.config.use_spot:
        return 0  # no CheckpointConfig was given: there are none
    bucket, prefix = svc.config.data_bucket, f"runs/{run}/checkpoints/{stage}/"
    keys = [key for key, _ in svc.s3.list_objects(bucket, prefix)]
    for key in keys:
        svc.s3.delete(bucket, key)
    return len(keys)


def _instance_seconds(job: dict[str, Any]) -> float | None:
    """``BillableTimeInSeconds`` × ``InstanceCount``: AWS bills each instance of a job for its billable
    (wall-clock) time (DescribeTrainingJob's reference says so); spot savings are included."""
    if job.get("BillableTimeInSeconds") is None:
        return None
    return float(job["BillableTimeInSeconds"]) * int(job.get("ResourceConfig", {}).get("InstanceCount") or 1)


def billable_seconds(svc: Services, run: str, final: dict[str, Any]) -> dict[str, float]:
    """Every job of the run that SageMaker billed, in instance-seconds: the tuning job's trials and the
    final job."""
    seconds: dict[str, float] = {}
    try:
        trials = svc.sagemaker.list_trials(run)
    except NotFoundError:
        trials = []
    for trial in trials:
        try:
            described = svc.sagemaker.describe_training_job(trial["TrainingJobName"])
        except NotFoundError:
            continue
        if (billed := _instance_seconds(described)) is not None:
            seconds[trial["TrainingJobName"]] = billed
    if (billed := _instance_seconds(final)) is not None:
        seconds[final["TrainingJobName"]] = billed
    return seconds
