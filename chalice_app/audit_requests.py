"""The dataset audit's request: a Processing job in the training image running training/audit.py
(validated against botocore in ``tests/orchestrator/test_audit_step.py``).
"""

from __future__ import annotations

from typing import Any

from chalice_app import names
from chalice_app.config import Config
from chalice_app.sagemaker_requests import reports_uri

PROCESSING = "/opt/ml/processing"
# The source dir is one tar.gz (what the training toolkit unpacks for training jobs): the audit
# unpacks it itself, then runs training/audit.py from it. "$@" are the ContainerArguments.
AUDIT_ENTRYPOINT = [
    "/bin/sh",
    "-c",
    f"mkdir -p {PROCESSING}/code && tar -xzf {PROCESSING}/input/code/*.tar.gz -C {PROCESSING}/code "
    f'&& cd {PROCESSING}/code && exec python3 audit.py "$@"',
    "audit",
]


def _input(name: str, uri: str) -> dict[str, Any]:
    """An S3 prefix copied to ``/opt/ml/processing/input/<name>`` before the job starts."""
    local = f"{PROCESSING}/input/{name}"
    return {
        "InputName": name,
        "S3Input": {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File"},
    }


def audit_job_request(config: Config, run: str, dataset_uri: str, dataset_bytes: int | None = None) -> dict[str, Any]:
    """``<run-id>-audit``: training/audit.py over the dataset, writing audit.json and audit.html to the
    run's reports (where the next step reads them). The dataset's size travels in a tag to the tuning
    job that the audit's end starts."""
    tags = names.tags(run, dataset_uri, "audit")
    if dataset_bytes is not None:
        tags.append({"Key": names.TAG_DATASET_BYTES, "Value": str(dataset_bytes)})
    return {
        "ProcessingJobName": names.audit_job_name(run),
        "RoleArn": config.sagemaker_role_arn,
        "AppSpecification": {
            "ImageUri": config.audit_image_uri or config.training_image_uri,
            "ContainerEntrypoint": AUDIT_ENTRYPOINT,
            "ContainerArguments": [
                "--data-dir",
                f"{PROCESSING}/input/data",
                "--out-dir",
                f"{PROCESSING}/output",
                "--min-train-images",
                str(config.audit_min_train_images),
                "--max-leaked-test-share",
                f"{config.audit_max_leaked_test_share:g}",
            ],
        },
        "ProcessingInputs": [_input("data", dataset_uri), _input("code", config.source_dir_s3_uri)],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "reports",
                    "S3Output": {
                        "S3Uri": reports_uri(config, run),
                        "LocalPath": f"{PROCESSING}/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": config.audit_instance_type,
                "VolumeSizeInGB": config.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": min(config.max_runtime_seconds, 6 * 3600)},
        "Tags": tags,
    }
