"""Pure builders for the SageMaker Model Registry: a project's model package group, a version of it,
and its approval (docs/architecture.md, "Projects and versions")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalice_app import names
from chalice_app.config import Config
from chalice_app.sagemaker_requests import reports_uri

IMAGE_TYPES = ["image/jpeg", "image/png"]


def model_package_group_request(config: Config, project: str, dataset_name: str) -> dict[str, Any]:
    return {
        "ModelPackageGroupName": names.check(config.endpoint(project), "model package group"),
        "ModelPackageGroupDescription": f"droptrain project {project} (dataset {dataset_name})"[:1024],
        "Tags": [{"Key": names.TAG_PROJECT, "Value": project}],
    }


def _metadata_value(value: Any) -> str:
    """Metadata values take the tag alphabet, 256 characters at most: longer ones are cut."""
    return names.tag_value(str(value), truncate=True)


def model_package_request(
    config: Config,
    project: str,
    run: str,
    model_data: str,
    dataset_uri: str | None,
    metrics: Mapping[str, float],
    hyperparameters: Mapping[str, str],
) -> dict[str, Any]:
    """A version in the project's group, pending approval: the Ray Serve image and the final job's
    ``model.tar.gz``, the evaluation report as model metrics, and the run, dataset, test metrics and
    best hyperparameters as metadata (values in SageMaker's tag alphabet, 256 characters at most).
    ``ClientToken`` makes a repeated event's registration the same version."""
    metadata = {names.TAG_RUN_ID: run, names.TAG_PROJECT: project}
    if dataset_uri:
        metadata[names.TAG_DATASET] = _metadata_value(dataset_uri)
    for name, value in sorted(metrics.items()):
        metadata[name] = f"{value:.6g}"
    for name, setting in sorted(hyperparameters.items())[: 50 - len(metadata)]:  # 50 entries at most in all
        metadata[f"hp:{name}"[:128]] = _metadata_value(setting) or "-"
    specification: dict[str, Any] = {
        "Containers": [{"Image": config.inference_image_uri, "ModelDataUrl": model_data}],
        "SupportedContentTypes": IMAGE_TYPES,
        "SupportedResponseMIMETypes": ["application/json"],
    }
    if not config.serverless:
        specification["SupportedRealtimeInferenceInstanceTypes"] = [config.inference_instance_type]
    return {
        "ModelPackageGroupName": config.endpoint(project),
        "ModelPackageDescription": f"run {run}",
        "InferenceSpecification": specification,
        "ModelApprovalStatus": "PendingManualApproval",
        "ModelMetrics": {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri(config, run)}}
        },
        "CustomerMetadataProperties": metadata,
        "ClientToken": run,
    }


def evaluation_uri(config: Config, run: str) -> str:
    """The final job's evaluation (``evaluation.json``, beside its other reports)."""
    return reports_uri(config, run) + "evaluation.json"


def approval_request(package_arn: str, status: str, description: str) -> dict[str, Any]:
    return {"ModelPackageArn": package_arn, "ModelApprovalStatus": status, "ApprovalDescription": description[:1024]}
