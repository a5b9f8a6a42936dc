"""A completed final job becomes a version of its project: registered, then approved by the promotion
gate (``chalice_app.gate``) or held for a person, with a notification either way."""

from __future__ import annotations

from typing import Any

from chalice_app import gate, names, registry_requests
from chalice_app.notifications import Notification
from chalice_app.pipeline.deployment import serving_run
from chalice_app.pipeline.services import Services, read_json
from chalice_app.pipeline.versions import describe_version, evaluation_key, find_version


def _dataset_name(dataset_uri: str | None, project: str) -> str:
    return dataset_uri.rstrip("/").rsplit("/", 1)[-1] if dataset_uri else project


def register(
    svc: Services,
    run: str,
    dataset_uri: str | None,
    model_data: str,
    metrics: dict[str, float],
    hyperparameters: dict[str, str],
) -> str:
    """Register the final job's model as a version of its project, then approve it or hold it."""
    config = svc.config
    project = names.project_of_run(run)
    group = config.endpoint(project)
    svc.sagemaker.create_model_package_group(
        registry_requests.model_package_group_request(config, project, _dataset_name(dataset_uri, project))
    )
    evaluation = read_json(svc, evaluation_key(run))
    if isinstance(evaluation, dict) and "macro_avg" in evaluation:
        metrics = {**metrics, "macro_f1": float(evaluation["macro_avg"]["f1"])}
    version = find_version(svc, project, run)
    if version is None:
        arn = svc.sagemaker.create_model_package(
            registry_requests.model_package_request(
                config, project, run, model_data, dataset_uri, metrics, hyperparameters
            )
        )
        version = describe_version(svc, arn)
    number = version["version"]
    svc.notifier.send(
        Notification(
            "model.registered",
            run,
            dataset_uri,
            version["status"],
            f"{run} is version {number} of project {project}",
            job=group,
            detail={
                "project": project,
                "model_package_group": group,
                "version": number,
                "model_package_arn": version["arn"],
                "metrics": metrics,
                "approval_mode": config.approval_mode,
            },
        )
    )
    if version["status"] != "PendingManualApproval":
        return f"registered as version {number} ({version['status']})"
    return _judge(svc, run, dataset_uri, version, evaluation)


def _judge(svc: Services, run: str, dataset_uri: str | None, version: dict[str, Any], evaluation: Any) -> str:
    """The gate on a held version: approve it (APPROVAL_MODE=auto, gate passed) or say why it waits."""
    config, project, number = svc.config, names.project_of_run(run), version["version"]
    group = config.endpoint(project)
    serving = serving_run(svc, project)
    serving_own = read_json(svc, evaluation_key(serving)) if serving else None
    verdict = gate.judge(
        evaluation if isinstance(evaluation, dict) else None,
        serving,
        serving_own if isinstance(serving_own, dict) else None,
        config.gate_max_f1_drop,
        config.gate_max_recall_drop,
    )
    if verdict.passed and config.approval_mode == "auto":
        svc.sagemaker.update_model_package(
            registry_requests.approval_request(
                version["arn"], "Approved", "droptrain gate: " + "; ".join(verdict.reasons)
            )
        )
        return f"registered as version {number}; approved by the gate"
    reasons = (
        verdict.reasons
        if not verdict.passed
        else ["APPROVAL_MODE=manual: a person approves each version", *verdict.reasons]
    )
    svc.notifier.send(
        Notification(
            "model.held",
            run,
            dataset_uri,
            "PendingManualApproval",
            f"version {number} of {project} is held: {reasons[0]}",
            job=group,
            detail={
                "project": project,
                "version": number,
                "model_package_arn": version["arn"],
                "serving": serving,
                "reasons": reasons,
                "gate": verdict.as_detail(),
                "approve": (
                    f"POST /projects/{project}/versions/{run}/deploy (or: droptrain rollback {project} --to {run})"
                ),
            },
        )
    )
    return f"registered as version {number}; held: {reasons[0]}"
