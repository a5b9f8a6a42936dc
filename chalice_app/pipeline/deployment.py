"""A project's endpoint: created, updated blue/green with guardrails (or queued behind an update),
recreated when it failed, and its state changes reported."""

from __future__ import annotations

from chalice_app import alarm_requests, endpoint_requests, names
from chalice_app.adapters.errors import ServiceError
from chalice_app.events import EndpointStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.services import Services

ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
# The run (and its dataset) waiting for the endpoint to finish its current update.
TAG_PENDING = "droptrain:pending-run-id"
TAG_PENDING_DATASET = "droptrain:pending-dataset"


def serving_run(svc: Services, project: str) -> str | None:
    """The run the project's endpoint serves (its endpoint config is named after it), if any."""
    endpoint = svc.sagemaker.describe_endpoint(svc.config.endpoint(project))
    return endpoint.get("EndpointConfigName") if endpoint else None


def deploy(svc: Services, run: str, dataset_uri: str | None, model_data: str, dedupe: str | None = None) -> str:
    config = svc.config
    project = names.project_of_run(run)
    svc.sagemaker.create_model(endpoint_requests.model_request(config, run, model_data, dataset_uri))
    svc.sagemaker.create_endpoint_config(endpoint_requests.endpoint_config_request(config, run, dataset_uri))
    if not config.serverless:
        # The alarms the rollout is watched by (PutMetricAlarm replaces them as they were: idempotent).
        for alarm in alarm_requests.alarm_requests(config, project):
            svc.alarms.put_alarm(alarm)
    action = _point_endpoint(svc, project, run, dataset_uri)
    _deployment_started(svc, run, dataset_uri, action, dedupe)
    return f"deployment: {action}"


def _point_endpoint(svc: Services, project: str, run: str, dataset_uri: str | None) -> str:
    """Create, recreate, queue or update the project's endpoint for ``run``; says which it did."""
    config, name = svc.config, svc.config.endpoint(project)
    endpoint = svc.sagemaker.describe_endpoint(name)
    if endpoint is not None and endpoint.get("EndpointStatus") == "Failed":
        # SageMaker cannot update an endpoint that failed: it goes, and comes back with this run.
        svc.sagemaker.delete_endpoint(name)
        _wait_until_gone(svc, name)
        svc.sagemaker.create_endpoint(endpoint_requests.create_endpoint_request(config, project, run, dataset_uri))
        action = "recreating the endpoint, which had failed"
    elif endpoint is not None and endpoint.get("EndpointStatus") == "Deleting":
        raise ServiceError(f"endpoint {name} is being deleted; the event is retried", retryable=True)
    elif endpoint is None:
        svc.sagemaker.create_endpoint(endpoint_requests.create_endpoint_request(config, project, run, dataset_uri))
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
        action = (
            "updating the endpoint in place"
            if config.serverless
            else f"updating the endpoint (blue/green, {'canary 10% then all' if config.canary else 'all at once'}, "
            f"baking {config.rollout_bake_seconds}s under alarms)"
        )
    return action


def _deployment_started(svc: Services, run: str, dataset_uri: str | None, action: str, dedupe: str | None) -> None:
    config, project = svc.config, names.project_of_run(run)
    name = config.endpoint(project)
    svc.notifier.send(
        Notification(
            "deployment.started",
            run,
            dataset_uri,
            "InProgress",
            f"deploying {run} to {name}: {action}",
            job=name,
            detail={
                "endpoint": name,
                "project": project,
                "model": run,
                "endpoint_config": run,
                "action": action,
                "instance_type": config.inference_instance_type,
                "instance_count": config.inference_instance_count,
                "alarms": [] if config.serverless else alarm_requests.rollback_alarm_names(config, project),
            },
            dedupe=dedupe,
        )
    )


# DeleteEndpoint takes seconds to a minute; the handler waits this long, then lets Lambda retry the event.
DELETE_WAIT_SECONDS, DELETE_POLL_SECONDS = 120, 5


def _wait_until_gone(svc: Services, name: str) -> None:
    waited = 0.0
    while svc.sagemaker.describe_endpoint(name) is not None:
        if waited >= DELETE_WAIT_SECONDS:
            raise ServiceError(
                f"endpoint {name} is still being deleted after {waited:.0f}s; the event is retried", retryable=True
            )
        svc.sleep(DELETE_POLL_SECONDS)
        waited += DELETE_POLL_SECONDS


def _update(svc: Services, endpoint_arn: str, run: str, dataset_uri: str | None) -> None:
    svc.sagemaker.update_endpoint(endpoint_requests.update_endpoint_request(svc.config, names.project_of_run(run), run))
    # The endpoint's tags say which run it was last asked to serve: the IN_SERVICE event that
    # ends the update compares it with the config actually serving, to tell success from rollback.
    svc.sagemaker.add_tags(endpoint_arn, names.tags(run, dataset_uri))
    svc.sagemaker.delete_tags(endpoint_arn, [TAG_PENDING, TAG_PENDING_DATASET])


def endpoint_changed(svc: Services, event: EndpointStateChange) -> str:
    config = svc.config
    project = names.project_of_resource(config.endpoint_prefix, event.name)
    if project is None:
        return f"ignored: endpoint {event.name} is not one of {config.endpoint_prefix}-*"
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
        still = f"; rolled back, still serving {serving}" if event.status != "FAILED" and serving else ""
        svc.notifier.send(
            Notification(
                "deployment.failed",
                run,
                names.dataset_of_tags(tags),
                "Failed",
                f"deploying {run} to {event.name} failed: {reason or 'no reason given'}{still}",
                job=event.name,
                detail={
                    "endpoint": event.name,
                    "project": project,
                    "reason": reason,
                    "rolled_back": bool(still),
                    "serving": serving if still else None,
                },
                dedupe=_deployment_key(event, run),
            )
        )
        outcome = "deployment failed"
    else:
        svc.notifier.send(
            Notification(
                "deployment.completed",
                serving,
                names.dataset_of_tags(tags),
                "InService",
                f"{serving} is serving on {event.name}",
                job=event.name,
                detail={"endpoint": event.name, "project": project, "model": serving, "endpoint_config": serving},
                dedupe=_deployment_key(event, serving),
            )
        )
        outcome = "deployment completed"
    pending = tags.get(TAG_PENDING)
    if event.status == "IN_SERVICE" and pending and pending != serving:
        pending_dataset = tags.get(TAG_PENDING_DATASET)
        _update(svc, endpoint["EndpointArn"], pending, names.untag_value(pending_dataset) if pending_dataset else None)
        outcome += f"; deploying queued run {pending}"
    return outcome


def _deployment_key(event: EndpointStateChange, run: str | None) -> str:
    """A run may be deployed again (a rollback to it): each deployment is told once, keyed by the
    endpoint's modification time, which a repeated delivery of the same event shares."""
    return f"{run}/deployments/{event.last_modified or 'unknown'}"
