"""The final training job ended: report it, then register what it made as a version of its project."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalice_app import cost, failures, names, registry_requests
from chalice_app import sagemaker_requests as requests
from chalice_app.events import TrainingJobStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.registration import register
from chalice_app.pipeline.services import (
    TERMINAL,
    Services,
    billable_seconds,
    dataset_of,
    prune_checkpoints,
    rule_verdicts,
)
from chalice_app.pipeline.tuning import trial_changed


@dataclass(frozen=True)
class _Ended:
    """What the notifications of a final job's end say, read once."""

    event: TrainingJobStateChange
    run: str
    dataset_uri: str | None
    description: dict[str, Any]
    metrics: dict[str, float]
    spent: Any


def training_changed(svc: Services, event: TrainingJobStateChange) -> str:
    if event.tuning_job_arn:
        return trial_changed(svc, event)
    if event.status not in TERMINAL:
        return f"ignored: training status {event.status}"
    description = None
    tags = event.tags
    if names.TAG_ROLE not in tags:
        description = svc.sagemaker.describe_training_job(event.name)
        tags = svc.sagemaker.list_tags(description["TrainingJobArn"])
    if tags.get(names.TAG_ROLE) != "final":
        return f"ignored: {event.name} is not a droptrain final training job"
    run = tags.get(names.TAG_RUN_ID) or names.run_of_final_job(event.name)
    prune_checkpoints(svc, run, "final")
    description = description or svc.sagemaker.describe_training_job(event.name)
    dataset_uri = names.dataset_of_tags(tags) or dataset_of(description)
    metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    price = svc.prices.hourly(svc.config.training_instance_type, "Training") if svc.prices is not None else None
    ended = _Ended(
        event, run, dataset_uri, description, metrics, cost.actual(billable_seconds(svc, run, description), price)
    )
    return _completed(svc, ended) if event.status == "Completed" else _failed(svc, ended)


def _failed(svc: Services, ended: _Ended) -> str:
    event, run, metrics = ended.event, ended.run, ended.metrics
    reason = failures.named(ended.description.get("FailureReason") or f"the training job was {event.status.lower()}")
    svc.notifier.send(
        Notification(
            "training.failed",
            run,
            ended.dataset_uri,
            event.status,
            f"final training {event.name} {event.status.lower()}: {reason}",
            job=event.name,
            detail={
                "reason": reason,
                "metrics": metrics,
                "cost": ended.spent,
                "endpoint_unchanged": svc.config.endpoint(names.project_of_run(run)),
            },
        )
    )
    return f"training {event.status.lower()}"


def _completed(svc: Services, ended: _Ended) -> str:
    event, run, dataset_uri, description, metrics = (
        ended.event,
        ended.run,
        ended.dataset_uri,
        ended.description,
        ended.metrics,
    )
    model_data = description["ModelArtifacts"]["S3ModelArtifacts"]
    accuracy = metrics.get("test:accuracy")
    verdicts = rule_verdicts(svc, run)
    hyperparameters = {
        k: v
        for k, v in description.get("HyperParameters", {}).items()
        if not k.startswith("sagemaker_") and k not in ("reports-uri", "debug-out")
    }
    issues = [v["rule"] for v in verdicts or [] if v["status"] == "IssuesFound"]
    blocked = bool(issues) and svc.config.block_on_rule_issues
    summary = f"final training {event.name} done" + (f": test accuracy {accuracy:.4f}" if accuracy is not None else "")
    if issues:
        summary += f"; rule issues: {', '.join(issues)}" + ("; not deployed" if blocked else "")
    svc.notifier.send(
        Notification(
            "training.completed",
            run,
            dataset_uri,
            "Completed",
            summary,
            job=event.name,
            detail={
                "metrics": metrics,
                "model_artifact": model_data,
                "output": model_data.rsplit("/", 1)[0] + "/output.tar.gz",
                "reports": requests.reports_uri(svc.config, run),
                "report": requests.reports_uri(svc.config, run) + "report.html" if verdicts is not None else None,
                "rules": verdicts,
                "rule_issues": issues,
                "deployment_blocked": blocked,
                "evaluation": registry_requests.evaluation_uri(svc.config, run),
                "hyperparameters": hyperparameters,
                "billable_seconds": description.get("BillableTimeInSeconds"),
                "cost": ended.spent,
            },
        )
    )
    if blocked:
        return f"not registered: rule issues ({', '.join(issues)}) and BLOCK_ON_RULE_ISSUES=true"
    return register(svc, run, dataset_uri, model_data, metrics, hyperparameters)
