"""Idle endpoints (docs/architecture.md, "Dataset audit and cost"): an endpoint nobody invoked for
``IDLE_STOP_HOURS`` is deleted — its model and endpoint config stay — and the next prediction for
its project starts it again.

Which run a stopped project served is kept as a tag on the project's model package group
(``droptrain:sleeping-run``): the endpoint, and its tags, are gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from chalice_app import endpoint_requests
from chalice_app.events import EventError
from chalice_app.notifications import Notification
from chalice_app.pipeline.deployment import recreate_pending
from chalice_app.pipeline.services import Services
from chalice_app.pipeline.versions import project_groups

TAG_SLEEPING = "droptrain:sleeping-run"


@dataclass(frozen=True)
class ScheduledTick:
    """EventBridge's scheduled event: only its time matters."""

    time: datetime

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ScheduledTick:
        raw = event.get("time")
        try:
            return cls(datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
        except ValueError:
            raise EventError(f"event field time should be an ISO 8601 time, got {raw!r}") from None


def stop_idle(svc: Services, tick: ScheduledTick) -> str:
    """Delete every project endpoint in service that nobody invoked for ``IDLE_STOP_HOURS``."""
    recreated = recreate_pending(svc)  # a safety net under the deletion events that create them
    hours = svc.config.idle_stop_hours
    if not hours:
        return "idle stop is off (IDLE_STOP_HOURS=0)" + (f"; recreated {', '.join(recreated)}" if recreated else "")
    now = tick.time if tick.time.tzinfo else tick.time.replace(tzinfo=timezone.utc)
    since = now - timedelta(hours=hours)
    stopped = []
    for project, group_arn in project_groups(svc).items():
        name = svc.config.endpoint(project)
        endpoint = svc.sagemaker.describe_endpoint(name)
        if endpoint is None or endpoint.get("EndpointStatus") != "InService":
            continue
        changed = endpoint.get("LastModifiedTime")
        if isinstance(changed, datetime) and changed > since:
            continue  # deployed within the window: not idle yet, whatever its traffic
        if svc.alarms.invocations(name, since, now) > 0:
            continue
        run = endpoint["EndpointConfigName"]
        svc.sagemaker.add_tags(group_arn, [{"Key": TAG_SLEEPING, "Value": run}])
        svc.sagemaker.delete_endpoint(name)
        svc.notifier.send(
            Notification(
                "deployment.stopped",
                run,
                None,
                "Stopped",
                f"{name} stopped: no invocation for {hours} h; the next prediction starts it again",
                job=name,
                detail={
                    "endpoint": name,
                    "project": project,
                    "model": run,
                    "idle_hours": hours,
                    "kept": ["model", "endpoint config", "model package"],
                },
                dedupe=f"{run}/stops/{now:%Y%m%dT%H%M}",
            )
        )
        stopped.append(project)
    return f"stopped {len(stopped)} idle endpoint(s)" + (f": {', '.join(stopped)}" if stopped else "")


def wake(svc: Services, project: str) -> bool:
    """Start the endpoint of a project that was stopped for idleness; ``False`` if it was not."""
    group_arn = project_groups(svc).get(project)
    if group_arn is None:
        return False
    run = svc.sagemaker.list_tags(group_arn).get(TAG_SLEEPING)
    if not run:
        return False
    name = svc.config.endpoint(project)
    if svc.sagemaker.describe_endpoint(name) is None:
        svc.sagemaker.create_endpoint(endpoint_requests.create_endpoint_request(svc.config, project, run, None))
        svc.notifier.send(
            Notification(
                "deployment.started",
                run,
                None,
                "InProgress",
                f"starting {name} again for a prediction: serving {run}",
                job=name,
                detail={"endpoint": name, "project": project, "model": run, "action": "waking the stopped endpoint"},
                dedupe=f"{run}/wakes/{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
            )
        )
    svc.sagemaker.delete_tags(group_arn, [TAG_SLEEPING])
    return True
