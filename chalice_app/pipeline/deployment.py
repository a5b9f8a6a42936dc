"""A project's endpoint: created, updated blue/green with guardrails (or queued behind an update),
recreated when it failed, and its state changes reported."""

from __future__ import annotations

import json

from chalice_app import alarm_requests, endpoint_requests, names
from chalice_app.adapters.errors import NotFoundError, ServiceError
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
        # SageMaker cannot update an endpoint that failed: it goes, and comes back with this run. Its
        # deletion takes a minute or more, longer than an API call may wait: the run is remembered first,
        # and the endpoint's deletion event (retried until it is gone) or the hourly tick creates it.
        _remember_recreation(svc, name, run, dataset_uri)
        svc.sagemaker.delete_endpoint(name)
        recreated = recreate_if_gone(svc, name) is not None  # gone at once: created now
        action = "recreating the endpoint, which had failed" + (
            "" if recreated else ": it is created again as soon as its deletion ends"
        )
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
        steps = "canary of one instance then all" if config.canary else "all at once"
        action = (
            "updating the endpoint in place"
            if config.serverless
            else f"updating the endpoint (blue/green, {steps}, baking {config.rollout_bake_seconds}s under alarms)"
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


# Endpoints deleted for having failed, to create again with a run once they are gone: one object each
# in the data bucket, written before the deletion starts.
RECREATE_PREFIX = "runs/_endpoints/recreate/"  # under runs/, which the functions may write; "_": no run


def _remember_recreation(svc: Services, name: str, run: str, dataset_uri: str | None) -> None:
    bucket, key = svc.config.data_bucket, f"{RECREATE_PREFIX}{name}.json"
    svc.s3.delete(bucket, key)  # a newer run replaces an older one
    svc.s3.put_if_absent(bucket, key, json.dumps({"run": run, "dataset": dataset_uri}).encode())


def recreate_if_gone(svc: Services, name: str) -> str | None:
    """Create the endpoint remembered for recreation, once its deletion has ended; the run it serves,
    or ``None`` when nothing is remembered or the endpoint is still there."""
    bucket, key = svc.config.data_bucket, f"{RECREATE_PREFIX}{name}.json"
    try:
        wanted = json.loads(svc.s3.get(bucket, key))
    except NotFoundError:
        return None
    if svc.sagemaker.describe_endpoint(name) is not None:
        return None
    project = names.project_of_resource(svc.config.endpoint_prefix, name) or name
    request = endpoint_requests.create_endpoint_request(svc.config, project, wanted["run"], wanted["dataset"])
    svc.sagemaker.create_endpoint(request)  # False when it exists already: a repeated event is harmless
    svc.s3.delete(bucket, key)
    return str(wanted["run"])


def recreate_pending(svc: Services) -> list[str]:
    """The hourly tick's sweep: every remembered endpoint that is gone now is created; their names."""
    done = []
    for key, _ in list(svc.s3.list_objects(svc.config.data_bucket, RECREATE_PREFIX)):
        name = key.removeprefix(RECREATE_PREFIX).removesuffix(".json")
        if recreate_if_gone(svc, name) is not None:
            done.append(name)
    return done


def endpoint_deleting(svc: Services, event: EndpointStateChange) -> str:
    """A deletion under way: the endpoint remembered for recreation is created once it is gone; until
    then the event fails, retryably, and Lambda delivers it again."""
    try:
        svc.s3.head(svc.config.data_bucket, f"{RECREATE_PREFIX}{event.name}.json")
    except NotFoundError:
        return f"ignored: endpoint {event.name} is being deleted, and nothing waits for it"
    run = recreate_if_gone(svc, event.name)
    if run is None:
        raise ServiceError(f"endpoint {event.name} is still being deleted; the event is retried", retryable=True)
    return f"recreated endpoint {event.name} with {run}"


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
    if event.status in ("DELETING", "Deleting"):
        return endpoint_deleting(svc, event)
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
