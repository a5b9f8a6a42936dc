"""Projects and their model versions (docs/architecture.md, "Projects and versions").

Every completed final job is registered as a version in its project's model package group; the
promotion gate (``chalice_app.gate``) approves it or holds it; approval — by the gate, a person, or
a rollback — sends SageMaker's "Model Package State Change", whose handler deploys the version.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from chalice_app import names, registry_requests
from chalice_app.adapters.errors import NotFoundError
from chalice_app.events import ModelPackageStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.deployment import deploy, serving_run
from chalice_app.pipeline.services import Services, dataset_of, read_json


class VersionError(Exception):
    """A request about projects or versions that cannot be done; ``status`` is its HTTP status."""

    status, code = 400, "bad_request"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code or self.code


class UnknownProjectError(VersionError):
    status, code = 404, "unknown_project"


class UnknownVersionError(VersionError):
    status, code = 404, "unknown_version"


class NoEarlierVersionError(VersionError):
    status, code = 409, "no_earlier_version"


class NoModelError(VersionError):
    status, code = 503, "no_model"


class ExportUnavailableError(VersionError):
    status, code = 404, "export_unavailable"


# What GET /projects/{project}/versions/{run_id}/export/{format} hands out: the final job's exports
# (training/trainlib/export.py), beside its reports.
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.pt"}
EXPORT_URL_SECONDS = 300


_RUN_IN_URI = re.compile(r"/runs/([a-z0-9-]+)/")
# Shown in a version's listing when its metadata carries them.
LISTED_METRICS = ("test:accuracy", "test:loss", "macro_f1")


def evaluation_key(run: str) -> str:
    """Where a run's evaluation.json lands in the bucket (the final job's reports)."""
    return f"runs/{run}/reports/evaluation.json"


def run_of_model_data(model_data: str | None) -> str | None:
    match = _RUN_IN_URI.search(model_data or "")
    return match.group(1) if match else None


# -- approval deploys ------------------------------------------------------------------------------


def package_changed(svc: Services, event: ModelPackageStateChange) -> str:
    """An approved version of one of the stage's projects is deployed to the project's endpoint."""
    project = names.project_of_resource(svc.config.endpoint_prefix, event.group)
    if project is None:
        return f"ignored: model package group {event.group} is not one of {svc.config.endpoint_prefix}-*"
    if event.approval != "Approved":
        return f"ignored: version {event.version} of {event.group} is {event.approval}"
    run = event.metadata.get(names.TAG_RUN_ID) or run_of_model_data(event.model_data)
    dataset = event.metadata.get(names.TAG_DATASET)
    model_data = event.model_data
    if not run or not model_data:
        version = describe_version(svc, event.arn)
        run, model_data, dataset = version["run_id"], version["model_data"], version.get("dataset")
    if not run or not model_data:
        return f"ignored: version {event.version} of {event.group} is not a droptrain run"
    dataset_uri = names.untag_value(dataset) if dataset else _dataset_of_run(svc, run)
    key = f"{run}/approvals/{re.sub(r'[^A-Za-z0-9-]', '', event.event_id) or event.version}"
    svc.notifier.send(
        Notification(
            "model.approved",
            run,
            dataset_uri,
            "Approved",
            f"version {event.version} of {project} ({run}) is approved",
            job=event.group,
            detail={"project": project, "version": event.version, "model_package_arn": event.arn},
            dedupe=key,
        )
    )
    return deploy(svc, run, dataset_uri, model_data, dedupe=key)


def _dataset_of_run(svc: Services, run: str) -> str | None:
    """The dataset a run trained on, from its final job (for a version whose metadata lacks it)."""
    try:
        return dataset_of(svc.sagemaker.describe_training_job(names.final_job_name(run)))
    except NotFoundError:
        return None


def deploy_version(svc: Services, project: str, run: str | None = None) -> dict[str, Any]:
    """Approve and deploy a version of ``project``: ``run``, or the newest approved version older than
    the one serving (a rollback). A version pending or rejected is approved, and its approval event
    deploys it; one approved already is deployed now."""
    project = names.project_of(project)
    versions = project_versions(svc, project)
    serving = next((v for v in versions if v["serving"]), None)
    if run is not None:
        target = next((v for v in versions if v["run_id"] == run), None)
        if target is None:
            raise UnknownVersionError(f"project {project} has no version from run {run!r}")
    else:
        before = serving["version"] if serving else max((v["version"] for v in versions), default=0) + 1
        earlier = [v for v in versions if v["status"] == "Approved" and v["version"] < before]
        if not earlier:
            raise NoEarlierVersionError(
                f"project {project} has no approved version before "
                f"{'version ' + str(serving['version']) if serving else 'the newest'} to roll back to"
            )
        target = earlier[-1]
    answer = {
        "project": project,
        "version": target["version"],
        "run_id": target["run_id"],
        "previous": serving["run_id"] if serving else None,
    }
    if serving is not None and serving["run_id"] == target["run_id"]:
        return {**answer, "action": "already serving"}
    if target["status"] != "Approved":
        svc.sagemaker.update_model_package(
            registry_requests.approval_request(target["arn"], "Approved", "approved through droptrain (deploy request)")
        )
        return {**answer, "action": "approved; its approval deploys it"}
    outcome = deploy(
        svc,
        target["run_id"],
        target.get("dataset") or _dataset_of_run(svc, target["run_id"]),
        target["model_data"],
        dedupe=f"{target['run_id']}/deployments/request-{uuid.uuid4().hex[:12]}",
    )
    return {**answer, "action": outcome.removeprefix("deployment: ")}


# -- reading projects and versions -------------------------------------------------------------------


def describe_version(svc: Services, arn: str) -> dict[str, Any]:
    described = svc.sagemaker.describe_model_package(arn)
    containers = described.get("InferenceSpecification", {}).get("Containers", [{}])
    model_data = containers[0].get("ModelDataUrl") if containers else None
    metadata = described.get("CustomerMetadataProperties") or {}
    run = metadata.get(names.TAG_RUN_ID) or run_of_model_data(model_data)
    dataset = metadata.get(names.TAG_DATASET)
    created = described.get("CreationTime")
    return {
        "version": described.get("ModelPackageVersion"),
        "arn": described["ModelPackageArn"],
        "run_id": run,
        "status": described.get("ModelApprovalStatus"),
        "model_data": model_data,
        "dataset": names.untag_value(dataset) if dataset else None,
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
        "metrics": {k: float(v) for k, v in metadata.items() if k in LISTED_METRICS and _is_number(v)},
        "approval_description": described.get("ApprovalDescription"),
    }


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def find_version(svc: Services, project: str, run: str) -> dict[str, Any] | None:
    """The version registered from ``run`` (newest first: a run is registered last, usually)."""
    for summary in reversed(svc.sagemaker.list_model_packages(svc.config.endpoint(project))):
        version = describe_version(svc, summary["ModelPackageArn"])
        if version["run_id"] == run:
            return version
    return None


def export_file(svc: Services, project: str, run: str, fmt: str) -> tuple[str, str | bytes]:
    """``("redirect", url)`` to a short-lived presigned URL of the version's exported model, or
    ``("file", bytes)`` where the store has no URLs (the local bucket)."""
    if fmt not in EXPORTS:
        raise VersionError(f"format must be one of {', '.join(EXPORTS)}, not {fmt[:40]!r}", "unknown_format")
    slug = names.project_of(project)
    if find_version(svc, slug, run) is None:
        raise UnknownVersionError(f"project {slug} has no version from run {run[:80]!r}")
    key = f"runs/{run}/reports/{EXPORTS[fmt]}"
    try:
        svc.s3.head(svc.config.data_bucket, key)
    except NotFoundError:
        report = read_json(svc, f"runs/{run}/reports/export.json") or {}
        reason = (report.get("formats", {}).get(fmt) or {}).get("reason", "the run was trained before exports")
        raise ExportUnavailableError(f"run {run} has no {fmt} export: {reason}") from None
    url = svc.s3.presigned_url(svc.config.data_bucket, key, EXPORT_URL_SECONDS)
    if url:
        return "redirect", url
    return "file", svc.s3.get(svc.config.data_bucket, key)


def project_versions(svc: Services, project: str) -> list[dict[str, Any]]:
    """The project's versions, oldest first, each with ``serving``; ``UnknownProjectError`` if it has none."""
    packages = svc.sagemaker.list_model_packages(svc.config.endpoint(project))
    if not packages:
        raise UnknownProjectError(f"there is no project {project!r}" + _known(svc))
    serving = serving_run(svc, project)
    versions = []
    for summary in packages:
        version = describe_version(svc, summary["ModelPackageArn"])
        if not version["metrics"] and version["run_id"]:
            evaluation = read_json(svc, evaluation_key(version["run_id"]))
            if isinstance(evaluation, dict) and "macro_avg" in evaluation:
                version["metrics"] = {"macro_f1": evaluation["macro_avg"]["f1"], "accuracy": evaluation.get("accuracy")}
        version["serving"] = version["run_id"] == serving
        versions.append(version)
    return versions


def project_groups(svc: Services) -> dict[str, str]:
    """Every project of the stage → its model package group's ARN."""
    prefix = svc.config.endpoint_prefix
    return {
        project: g["ModelPackageGroupArn"]
        for g in svc.sagemaker.list_model_package_groups(f"{prefix}-")
        if (project := names.project_of_resource(prefix, g["ModelPackageGroupName"]))
    }


def project_names(svc: Services) -> list[str]:
    return sorted(project_groups(svc))


def _known(svc: Services) -> str:
    known = project_names(svc)
    return f"; projects: {', '.join(known)}" if known else "; no project has a version yet"


def projects(svc: Services) -> list[dict[str, Any]]:
    """Every project: its endpoint, the endpoint's state and the run it serves."""
    out = []
    for project in project_names(svc):
        endpoint = svc.sagemaker.describe_endpoint(svc.config.endpoint(project))
        out.append(
            {
                "project": project,
                "endpoint": svc.config.endpoint(project),
                "endpoint_status": endpoint.get("EndpointStatus") if endpoint else "NotDeployed",
                "serving": endpoint.get("EndpointConfigName") if endpoint else None,
            }
        )
    return out


def resolve_project(svc: Services, project: str | None) -> str:
    """The project a request is for: the one named, else ``DEFAULT_PROJECT``, else the only one."""
    if project:
        return names.project_of(project)
    if svc.config.default_project:
        return svc.config.default_project
    known = project_names(svc)
    if len(known) == 1:
        return known[0]
    if not known:
        raise NoModelError("no model is deployed: no project has a version yet (upload a dataset first)")
    raise VersionError(
        f"there are {len(known)} projects: POST /predict/{{project}} with one of {', '.join(known)} "
        "(or set DEFAULT_PROJECT)",
        "project_required",
    )
