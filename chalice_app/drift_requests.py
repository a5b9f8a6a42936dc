"""The drift check's request: a Processing job in the audit's image running training/drift_check.py over the
serving version's artifact and the project's sampled captures (validated against botocore in
``tests/orchestrator/test_drift.py``)."""

from __future__ import annotations

import json
from typing import Any

from chalice_app import capture, names
from chalice_app.audit_requests import PROCESSING, processing_input
from chalice_app.config import Config

# As the audit's: the source dir unpacked, then the script run from it. "$@" are the ContainerArguments.
DRIFT_ENTRYPOINT = [
    "/bin/sh",
    "-c",
    f"mkdir -p {PROCESSING}/code && tar -xzf {PROCESSING}/input/code/*.tar.gz -C {PROCESSING}/code "
    f'&& cd {PROCESSING}/code && exec python3 drift_check.py "$@"',
    "drift",
]
EPOCH = "1970-01-01T00:00:00Z"  # "since" for a project never checked: every capture


def drift_prefix(project: str) -> str:
    """Where a project's checks keep their verdicts: ``runs/drift/<project>/<job>/drift.json``, and the history."""
    return f"runs/drift/{project}/"


def sampled_prefix(config: Config, project: str) -> str:
    """The captures SageMaker sampled (``review/`` is chosen by doubt: not a sample of what the endpoint sees)."""
    return f"{capture.project_prefix(project)}/{config.endpoint(project)}/{capture.VARIANT}/"


def manifest_key(project: str, job: str) -> str:
    """The check's list of captures: only those since the last check are downloaded."""
    return f"{drift_prefix(project)}{job}/captures.manifest"


def captures_manifest(config: Config, project: str, keys: list[str]) -> bytes:
    """SageMaker's manifest format: the prefix, then each object's key relative to it."""
    prefix = f"s3://{config.data_bucket}/{sampled_prefix(config, project)}"
    return json.dumps([{"prefix": prefix}, *keys]).encode()


def drift_job_request(config: Config, job: str, project: str, run: str, model_data: str, since: str) -> dict[str, Any]:
    """The check over the captures ``manifest_key`` lists (``captures_manifest``: written before the job)."""
    bucket = f"s3://{config.data_bucket}/"
    captures = processing_input("captures", bucket + manifest_key(project, job))
    captures["S3Input"]["S3DataType"] = "ManifestFile"
    return {
        "ProcessingJobName": names.check(job, "processing job"),
        "RoleArn": config.sagemaker_role_arn,
        "AppSpecification": {
            "ImageUri": config.audit_image_uri or config.training_image_uri,
            "ContainerEntrypoint": DRIFT_ENTRYPOINT,
            "ContainerArguments": [
                "--model",
                f"{PROCESSING}/input/model",
                "--captures",
                f"{PROCESSING}/input/captures",
                "--since",
                since or EPOCH,
                "--out",
                f"{PROCESSING}/output",
            ],
        },
        "ProcessingInputs": [
            processing_input("model", model_data),
            captures,
            processing_input("code", config.source_dir_s3_uri),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "verdict",
                    "S3Output": {
                        "S3Uri": f"{bucket}{drift_prefix(project)}{job}/",
                        "LocalPath": f"{PROCESSING}/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": config.audit_instance_type, "VolumeSizeInGB": 30}
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [*names.tags(run, None, "drift"), {"Key": names.TAG_PROJECT, "Value": project}],
    }
