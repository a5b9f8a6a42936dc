"""The pipeline's steps, one per event (ARCHITECTURE.md, "The flow").

Each step takes the services and a typed event and returns a short outcome for the log. Every
step is safe to run twice: resource names are derived from the run, "already exists" is success,
and notifications are sent once per run and kind (``notifications.Notifier``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from chalice_app import names, sagemaker_requests as requests, validation
from chalice_app.adapters.errors import NotFoundError, ServiceError
from chalice_app.config import Config
from chalice_app.events import EndpointStateChange, ObjectCreated, TrainingJobStateChange, TuningJobStateChange
from chalice_app.notifications import Notification, Notifier
from chalice_app.ports import EndpointRuntime, ObjectStore, SageMaker

TERMINAL = ("Completed", "Failed", "Stopped")
ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
# The run (and its dataset) waiting for the endpoint to finish its current update.
TAG_PENDING = "droptrain:pending-run-id"
TAG_PENDING_DATASET = "droptrain:pending-dataset"


@dataclass
class Services:
    """What a pipeline step works with: the stage's configuration and the ports (``chalice_app.ports``)."""

    config: Config
    s3: ObjectStore
    sagemaker: SageMaker
    runtime: EndpointRuntime
    notifier: Notifier
    sleep: Callable[[float], None]


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


def _dataset_of(description: dict[str, Any]) -> str | None:
    definition = description.get("TrainingJobDefinition", description)
    try:
        return definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    except (KeyError, IndexError, TypeError):
        return None


# -- dataset uploaded ------------------------------------------------------------------------


def dataset_uploaded(svc: Services, event: ObjectCreated) -> str:
    config = svc.config
    if event.bucket != config.data_bucket:
        return f"ignored: bucket {event.bucket} is not {config.data_bucket}"
    dataset = names.parse_dataset_key(event.bucket, event.key, config.dataset_prefix)
    if dataset is None:
        return f"ignored: {event.key} is neither a dataset's {names.READY_MARKER} marker nor an archive"
    run = names.run_id(dataset, event.etag)
    problem = names.dataset_name_problem(dataset.name)
    if problem:
        report = validation.DatasetReport(checked="name", reasons=[problem])
    elif dataset.kind == "folder":
        report = validation.check_folder(svc.s3, dataset)
    else:
        report = validation.check_archive(svc.s3, dataset, event.size or svc.s3.head(dataset.bucket, dataset.key)["size"])
    request = None
    if report.ok:
        # Built before anything is announced: a name or tag SageMaker would refuse rejects the dataset.
        try:
            request = requests.tuning_job_request(config, run, dataset)
        except names.InvalidNameError as exc:
            report.reasons.append(str(exc))
    if not report.ok:
        svc.notifier.send(Notification(
            "dataset.rejected", run, dataset.uri, "Rejected", f"{dataset.name} rejected: {report.reasons[0]}",
            detail=report.detail(),
        ))
        return f"rejected: {'; '.join(report.reasons)}"
    classes = f"{len(report.classes)} classes" if report.classes else "archive"
    svc.notifier.send(Notification(
        "dataset.accepted", run, dataset.uri, "Accepted", f"{dataset.name} accepted ({classes}), run {run}",
        detail=report.detail(),
    ))
    created = svc.sagemaker.create_tuning_job(request)
    job_config = request["HyperParameterTuningJobConfig"]
    svc.notifier.send(Notification(
        "tuning.started", run, dataset.uri, "InProgress",
        f"tuning {run}: {config.tuning_strategy}, up to {config.max_tuning_jobs} trials", job=run,
        detail={
            "strategy": config.tuning_strategy,
            "objective": requests.OBJECTIVE,
            "max_training_jobs": job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs"),
            "max_parallel_jobs": config.max_parallel_jobs,
            "instance_type": config.training_instance_type,
            "spot": config.use_spot,
            "tuned": sorted(r["Name"] for ranges in job_config["ParameterRanges"].values() for r in ranges),
        },
    ))
    return "tuning job created" if created else "tuning job already existed"


# -- tuning job finished ---------------------------------------------------------------------


def tuning_changed(svc: Services, event: TuningJobStateChange) -> str:
    if event.status not in TERMINAL:
        return f"ignored: tuning status {event.status}"
    if names.TAG_RUN_ID not in event.tags:
        return f"ignored: tuning job {event.name} is not droptrain's"
    run = event.tags[names.TAG_RUN_ID]
    description = svc.sagemaker.describe_tuning_job(event.name)
    dataset_uri = names.dataset_of_tags(event.tags) or _dataset_of(description)
    counters = description.get("TrainingJobStatusCounters", {})
    if event.status != "Completed":
        reason = description.get("FailureReason") or f"the tuning job was {event.status.lower()}"
        svc.notifier.send(Notification(
            "tuning.failed", run, dataset_uri, event.status, f"tuning {run} {event.status.lower()}: {reason}",
            job=event.name, detail={"reason": reason, "training_jobs": counters},
        ))
        return f"tuning {event.status.lower()}"
    best = description.get("BestTrainingJob") or {}
    if not best.get("TrainingJobName") or not best.get("TunedHyperParameters"):
        reason = f"no trial succeeded ({counters.get('NonRetryableError', 0)} failed, {counters.get('Stopped', 0)} stopped)"
        svc.notifier.send(Notification(
            "tuning.failed", run, dataset_uri, "NoSuccessfulTrial", f"tuning {run}: {reason}",
            job=event.name, detail={"reason": reason, "training_jobs": counters},
        ))
        return "tuning had no successful trial"
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    tuned = best["TunedHyperParameters"]
    svc.notifier.send(Notification(
        "tuning.completed", run, dataset_uri, "Completed",
        f"tuning {run} done: {objective.get('MetricName', requests.OBJECTIVE)} {objective.get('Value', float('nan')):.4f}",
        job=event.name,
        detail={"best_training_job": best["TrainingJobName"], "best_hyperparameters": tuned,
                "objective": objective, "training_jobs": counters},
    ))
    static = description["TrainingJobDefinition"].get("StaticHyperParameters", {})
    request = requests.final_training_request(svc.config, run, dataset_uri, static, tuned)
    created = svc.sagemaker.create_training_job(request)
    svc.notifier.send(Notification(
        "training.started", run, dataset_uri, "InProgress", f"final training {request['TrainingJobName']} started",
        job=request["TrainingJobName"],
        detail={"hyperparameters": {k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")},
                "instance_type": svc.config.training_instance_type, "managed_debugger": svc.config.managed_debugger},
    ))
    return "final training job created" if created else "final training job already existed"


# -- final training finished -----------------------------------------------------------------


def training_changed(svc: Services, event: TrainingJobStateChange) -> str:
    if event.tuning_job_arn:
        return f"ignored: {event.name} is a tuning trial"
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
    description = description or svc.sagemaker.describe_training_job(event.name)
    dataset_uri = names.dataset_of_tags(tags) or _dataset_of(description)
    metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    if event.status != "Completed":
        reason = description.get("FailureReason") or f"the training job was {event.status.lower()}"
        svc.notifier.send(Notification(
            "training.failed", run, dataset_uri, event.status, f"final training {event.name} {event.status.lower()}: {reason}",
            job=event.name, detail={"reason": reason, "metrics": metrics, "endpoint_unchanged": svc.config.endpoint_name},
        ))
        return f"training {event.status.lower()}"
    model_data = description["ModelArtifacts"]["S3ModelArtifacts"]
    accuracy = metrics.get("test:accuracy")
    verdicts = rule_verdicts(svc, run)
    issues = [v["rule"] for v in verdicts or [] if v["status"] == "IssuesFound"]
    blocked = bool(issues) and svc.config.block_on_rule_issues
    summary = f"final training {event.name} done" + (f": test accuracy {accuracy:.4f}" if accuracy is not None else "")
    if issues:
        summary += f"; rule issues: {', '.join(issues)}" + ("; not deployed" if blocked else "")
    svc.notifier.send(Notification(
        "training.completed", run, dataset_uri, "Completed", summary, job=event.name,
        detail={
            "metrics": metrics, "model_artifact": model_data,
            "output": model_data.rsplit("/", 1)[0] + "/output.tar.gz",
            "reports": requests.reports_uri(svc.config, run),
            "report": requests.reports_uri(svc.config, run) + "report.html" if verdicts is not None else None,
            "rules": verdicts, "rule_issues": issues, "deployment_blocked": blocked,
            "hyperparameters": {k: v for k, v in description.get("HyperParameters", {}).items() if not k.startswith("sagemaker_")},
            "billable_seconds": description.get("BillableTimeInSeconds"),
        },
    ))
    if blocked:
        return f"not deployed: rule issues ({', '.join(issues)}) and BLOCK_ON_RULE_ISSUES=true"
    return deploy(svc, run, dataset_uri, model_data)


def deploy(svc: Services, run: str, dataset_uri: str | None, model_data: str) -> str:
    config = svc.config
    svc.sagemaker.create_model(requests.model_request(config, run, model_data, dataset_uri))
    svc.sagemaker.create_endpoint_config(requests.endpoint_config_request(config, run, dataset_uri))
    endpoint = svc.sagemaker.describe_endpoint(config.endpoint_name)
    if endpoint is not None and endpoint.get("EndpointStatus") == "Failed":
        # SageMaker cannot update an endpoint that failed: it goes, and comes back with this run.
        svc.sagemaker.delete_endpoint(config.endpoint_name)
        _wait_until_gone(svc, config.endpoint_name)
        svc.sagemaker.create_endpoint(requests.create_endpoint_request(config, run, dataset_uri))
        action = "recreating the endpoint, which had failed"
    elif endpoint is not None and endpoint.get("EndpointStatus") == "Deleting":
        raise ServiceError(f"endpoint {config.endpoint_name} is being deleted; the event is retried", retryable=True)
    elif endpoint is None:
        svc.sagemaker.create_endpoint(requests.create_endpoint_request(config, run, dataset_uri))
        action = "creating the endpoint"
    elif endpoint.get("EndpointConfigName") == run:
        action = "already deployed"
    elif endpoint.get("EndpointStatus") in ENDPOINT_BUSY:
        # An endpoint can't take a second update while one is running: queue this run; the
        # endpoint's next IN_SERVICE event deploys it.
        pending = [{"Key": TAG_PENDING, "Value": run}]
        if dataset_uri:
            pending.append({"Key": TAG_PENDING_DATASET, "Value": names.tag_value(dataset_uri)})
        svc.sagemaker.add_tags(endpoint["EndpointArn"], pending)
        action = f"queued behind the endpoint's current {endpoint['EndpointStatus'].lower()}"
    else:
        _update(svc, endpoint["EndpointArn"], run, dataset_uri)
        action = "updating the endpoint (blue/green)" if not config.serverless else "updating the endpoint"
    svc.notifier.send(Notification(
        "deployment.started", run, dataset_uri, "InProgress", f"deploying {run} to {config.endpoint_name}: {action}",
        job=config.endpoint_name,
        detail={"endpoint": config.endpoint_name, "model": run, "endpoint_config": run, "action": action,
                "instance_type": config.inference_instance_type},
    ))
    return f"deployment: {action}"


# DeleteEndpoint takes seconds to a minute; the handler waits this long, then lets Lambda retry the event.
DELETE_WAIT_SECONDS, DELETE_POLL_SECONDS = 120, 5


def _wait_until_gone(svc: Services, name: str) -> None:
    waited = 0.0
    while svc.sagemaker.describe_endpoint(name) is not None:
        if waited >= DELETE_WAIT_SECONDS:
            raise ServiceError(f"endpoint {name} is still being deleted after {waited:.0f}s; the event is retried", retryable=True)
        svc.sleep(DELETE_POLL_SECONDS)
        waited += DELETE_POLL_SECONDS


def _update(svc: Services, endpoint_arn: str, run: str, dataset_uri: str | None) -> None:
    svc.sagemaker.update_endpoint(requests.update_endpoint_request(svc.config, run))
    # The endpoint's tags say which run it was last asked to serve: the IN_SERVICE event that
    # ends the update compares it with the config actually serving, to tell success from rollback.
    svc.sagemaker.add_tags(endpoint_arn, names.tags(run, dataset_uri))
    svc.sagemaker.delete_tags(endpoint_arn, [TAG_PENDING, TAG_PENDING_DATASET])


# -- endpoint state --------------------------------------------------------------------------


def endpoint_changed(svc: Services, event: EndpointStateChange) -> str:
    config = svc.config
    if event.name != config.endpoint_name:
        return f"ignored: endpoint {event.name} is not {config.endpoint_name}"
    if event.status not in ("IN_SERVICE", "FAILED"):
        return f"ignored: endpoint status {event.status}"
    endpoint = svc.sagemaker.describe_endpoint(event.name)
    if endpoint is None:
        return "ignored: the endpoint no longer exists"
    tags = svc.sagemaker.list_tags(endpoint["EndpointArn"])
    wanted = tags.get(names.TAG_RUN_ID)
    serving = endpoint.get("EndpointConfigName") or event.config_name
    reason = endpoint.get("FailureReason")
    if event.status == "FAILED" or (wanted and wanted != serving and reason):
        run = wanted or serving
        still = f"; still serving {serving}" if event.status != "FAILED" and serving else ""
        svc.notifier.send(Notification(
            "deployment.failed", run, names.dataset_of_tags(tags), "Failed",
            f"deploying {run} to {event.name} failed: {reason or 'no reason given'}{still}",
            job=event.name, detail={"endpoint": event.name, "reason": reason, "serving": serving if still else None},
        ))
        outcome = "deployment failed"
    else:
        svc.notifier.send(Notification(
            "deployment.completed", serving, names.dataset_of_tags(tags), "InService",
            f"{serving} is serving on {event.name}", job=event.name,
            detail={"endpoint": event.name, "model": serving, "endpoint_config": serving},
        ))
        outcome = "deployment completed"
    pending = tags.get(TAG_PENDING)
    if event.status == "IN_SERVICE" and pending and pending != serving:
        pending_dataset = tags.get(TAG_PENDING_DATASET)
        _update(svc, endpoint["EndpointArn"], pending, names.untag_value(pending_dataset) if pending_dataset else None)
        outcome += f"; deploying queued run {pending}"
    return outcome
