"""The dataset audit's request: a Processing job in the training image running training/audit.py
(validated against botocore in ``tests/orchestrator/test_audit_step.py``).
"""

from __future__ import annotations

from typing import Any

from chalice_app import names
from chalice_app.config import MAX_INSTANCES, Config
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


def processing_input(name: str, uri: str, sharded: bool = False) -> dict[str, Any]:
    """An S3 prefix copied to ``/opt/ml/processing/input/<name>`` before the job starts: whole on every
    instance, or (``sharded``) each instance a share of its objects."""
    local = f"{PROCESSING}/input/{name}"
    source = {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File"}
    if sharded:
        source["S3DataDistributionType"] = "ShardedByS3Key"
    return {"InputName": name, "S3Input": source}


def instances(config: Config, kind: str, images: int) -> int:
    """How many instances scan the dataset: one per ``AUDIT_IMAGES_PER_INSTANCE`` images of a folder (at
    most ``MAX_INSTANCES``); an archive is one object, which no instance can share."""
    if kind != "folder":
        return 1
    return max(1, min(MAX_INSTANCES, -(-images // config.audit_images_per_instance)))


def audit_job_request(
    config: Config, run: str, dataset_uri: str, dataset_bytes: int | None = None, count: int = 1
) -> dict[str, Any]:
    """``<run-id>-audit``: training/audit.py over the dataset, writing audit.json and audit.html to the
    run's reports (where the next step reads them). On ``count`` instances it is ``<run-id>-shards-audit``
    instead: each scans its share into ``reports/audit-shards/``, and ``audit_merge_request`` audits
    them. The dataset's size travels in a tag to the tuning job that the audit's end starts."""
    tags = names.tags(run, dataset_uri, "audit")
    if dataset_bytes is not None:
        tags.append({"Key": names.TAG_DATASET_BYTES, "Value": str(dataset_bytes)})
    if count == 1:
        return _job(
            config, names.audit_job_name(run), processing_input("data", dataset_uri), [], reports_uri(config, run), tags
        )
    return _job(
        config,
        names.audit_shards_job_name(run),
        processing_input("data", dataset_uri, sharded=True),
        ["--mode", "shard"],
        shards_uri(config, run),
        tags,
        count,
    )


def shards_uri(config: Config, run: str) -> str:
    return reports_uri(config, run) + "audit-shards/"


def audit_merge_request(config: Config, run: str, tags: list[dict[str, str]]) -> dict[str, Any]:
    """``<run-id>-audit`` after a sharded scan (``tags``: the scan's): the findings over every shard's file,
    the same as one instance's audit of the whole dataset, duplicates across shards included."""
    shards = processing_input("data", shards_uri(config, run))
    return _job(config, names.audit_job_name(run), shards, ["--mode", "merge"], reports_uri(config, run), tags)


def _job(
    config: Config,
    name: str,
    data: dict[str, Any],
    mode: list[str],
    output_uri: str,
    tags: list[dict[str, str]],
    count: int = 1,
) -> dict[str, Any]:
    return {
        "ProcessingJobName": name,
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
                *mode,
            ],
        },
        "ProcessingInputs": [data, processing_input("code", config.source_dir_s3_uri)],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "reports",
                    "S3Output": {"S3Uri": output_uri, "LocalPath": f"{PROCESSING}/output", "S3UploadMode": "EndOfJob"},
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": count,
                "InstanceType": config.audit_instance_type,
                "VolumeSizeInGB": config.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": min(config.max_runtime_seconds, 6 * 3600)},
        "Tags": tags,
    }
