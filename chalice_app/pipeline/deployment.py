"""The endpoint: created, updated blue/green (or queued behind an update), recreated when it failed,
and its state changes reported."""

from __future__ import annotations

from chalice_app import names, sagemaker_requests as requests
from chalice_app.adapters.errors import ServiceError
from chalice_app.events import EndpointStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.services import Services

ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
# The run (and its dataset) waiting for the endpoint to finish its current update.
TAG_PENDING = "droptrain:pending-run-id"
TAG_PENDING_DATASET = "droptrain:pending-dataset"


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
