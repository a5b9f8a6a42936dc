"""Drift checks (docs/operations.md, "Drift"): is what the endpoint sees still what its model learned?

Hourly (the idle check's schedule) and on demand (``POST /projects/{project}/drift-check``), a project with a
serving version and captures since its last check gets a Processing job, never the embedding work in the
Lambda: ``training/drift_check.py`` over the version's artifact and the sampled captures. Its end writes the
verdict into the project's history (``runs/drift/<project>/history/``) and, for drift, ``drift.detected``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from chalice_app import drift_requests, names
from chalice_app.events import ProcessingJobStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.deployment import serving_run
from chalice_app.pipeline.idle import ScheduledTick
from chalice_app.pipeline.services import Services, read_json
from chalice_app.pipeline.versions import NoModelError, project_groups, project_versions

HISTORY = 48  # checks the history route answers, newest first


def _history_prefix(project: str) -> str:
    return f"{drift_requests.drift_prefix(project)}history/"


def history(svc: Services, project: str) -> list[dict[str, Any]]:
    """The project's verdicts, newest first (``GET /projects/{project}/drift``)."""
    slug = names.project_of(project)
    project_versions(svc, slug)  # UnknownProjectError: 404
    return _history(svc, slug)


def _history(svc: Services, project: str) -> list[dict[str, Any]]:
    keys = [key for key, _ in svc.s3.list_objects(svc.config.data_bucket, _history_prefix(project))][-HISTORY:]
    return [v for v in (read_json(svc, key) for key in reversed(keys)) if isinstance(v, dict)]


def _last_check(svc: Services, project: str) -> tuple[str, set[str]]:
    """Where the last check stopped (its newest capture's time; every capture for the first) and the
    captures it read (its manifest)."""
    newest = _history(svc, project)[:1]
    if not newest:
        return drift_requests.EPOCH, set()
    listed = read_json(svc, drift_requests.manifest_key(project, str(newest[0].get("job"))))
    read = {key for key in listed[1:] if isinstance(key, str)} if isinstance(listed, list) else set()
    return str(newest[0].get("until") or drift_requests.EPOCH), read


def _captured_since(svc: Services, project: str, since: str, read: set[str]) -> list[str]:
    """What SageMaker sampled in the hour of ``since`` or later (its folders are hourly; the check itself
    drops the older ones of that hour) that the last check did not read, relative to the sampled prefix."""
    prefix = drift_requests.sampled_prefix(svc.config, project)
    hour = f"{since[:4]}/{since[5:7]}/{since[8:10]}/{since[11:13]}"
    keys = (key[len(prefix) :] for key, _ in svc.s3.list_objects(svc.config.data_bucket, prefix))
    return [key for key in keys if key[:13] >= hour and key not in read]


def start_check(svc: Services, project: str) -> dict[str, Any]:
    """A drift check of ``project``'s serving version on the captures since its last check."""
    slug = names.project_of(project)
    versions = project_versions(svc, slug)
    serving = next((v for v in versions if v["serving"]), None)
    if serving is None:
        raise NoModelError(f"project {slug} serves no version: nothing to check for drift")
    since, read = _last_check(svc, slug)
    captured = _captured_since(svc, slug, since, read)
    if not captured:
        return {"project": slug, "job": None, "since": since, "action": "nothing captured since the last check"}
    job = names.drift_job_name(svc.config.endpoint(slug), uuid.uuid4().hex[:8])
    manifest = drift_requests.captures_manifest(svc.config, slug, captured)
    svc.s3.put_if_absent(svc.config.data_bucket, drift_requests.manifest_key(slug, job), manifest)
    svc.sagemaker.create_processing_job(
        drift_requests.drift_job_request(svc.config, job, slug, serving["run_id"], serving["model_data"], since)
    )
    return {"project": slug, "job": job, "since": since, "captures": len(captured), "action": "checking"}


def scheduled_checks(svc: Services, tick: ScheduledTick) -> str:
    """The hourly round: every project that serves and captured something since its last check."""
    started = []
    for project in sorted(project_groups(svc)):
        if serving_run(svc, project) is None:
            continue
        if start_check(svc, project)["job"]:
            started.append(project)
    return f"drift checks started: {', '.join(started) or 'none'}"


def _project_of_job(svc: Services, job: str) -> str | None:
    head = f"{svc.config.endpoint_prefix}-".lower()
    if not job.lower().startswith(head) or names.DRIFT_JOB_INFIX not in job:
        return None
    return job[len(head) :].rsplit(names.DRIFT_JOB_INFIX, 1)[0]


def drift_changed(svc: Services, event: ProcessingJobStateChange) -> str:
    """A check ended: its verdict into the history, and ``drift.detected`` when it found drift."""
    project = _project_of_job(svc, event.name)
    if project is None:
        return f"ignored: {event.name} is not a drift check of this stage"
    if event.status != "Completed":
        return f"drift check {event.name} {event.status}: {event.failure_reason or 'no reason given'}"
    verdict = read_json(svc, f"{drift_requests.drift_prefix(project)}{event.name}/drift.json")
    if not isinstance(verdict, dict):
        return f"drift check {event.name} wrote no verdict"
    checked = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"job": event.name, "project": project, "checked_at": checked, **verdict}
    key = f"{_history_prefix(project)}{checked}-{event.name}.json"
    svc.s3.put_if_absent(svc.config.data_bucket, key, json.dumps(entry).encode())
    if verdict.get("status") == "drift":
        _announce(svc, project, event.name, entry)
    return f"drift check {event.name}: {verdict.get('status')}"


def _announce(svc: Services, project: str, job: str, entry: dict[str, Any]) -> None:
    captures = f"s3://{svc.config.data_bucket}/{drift_requests.sampled_prefix(svc.config, project)}"
    examples = [{**e, "capture": captures + e["file"]} for e in entry.get("examples", []) if isinstance(e, dict)]
    labels = entry.get("labels") or {}
    detail = {
        "project": project,
        "model": entry.get("model"),
        "sample_size": entry.get("sample_size"),
        "test": entry.get("test"),
        "statistic": entry.get("statistic"),
        "p_value": entry.get("p_value"),
        "alpha": entry.get("alpha"),
        "since": entry.get("since"),
        "until": entry.get("until"),
        "label_shift": labels.get("distance"),
        "most_shifted_labels": labels.get("most_shifted", []),
        "examples": examples,
    }
    summary = f"{project}: the last {entry.get('sample_size')} captured images differ from the training set"
    run = entry.get("model") or None
    svc.notifier.send(
        Notification(
            "drift.detected", run, None, "Drift", summary, job=job, detail=detail, dedupe=f"drift/{project}/{job}"
        )
    )
