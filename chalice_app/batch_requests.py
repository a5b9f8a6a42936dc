"""Pure builders for a batch prediction job: configuration + job in, the SageMaker Batch Transform request
and its manifest out (validated against botocore in ``tests/orchestrator/test_batch.py``).

The job runs the version's model, the Ray Serve artifact its endpoint serves, on each image of the
manifest as one record (``SplitType: None``: an image is never split), and writes one ``<key>.out`` per
image; ``chalice_app.pipeline.batch`` assembles them into ``predictions.jsonl`` when the job ends.
"""

from __future__ import annotations

import json
from typing import Any

from chalice_app import names
from chalice_app.config import Config

# Sent as Accept with every record: the serving application answers each image with one JSON line, its
# error included, never a 4xx (one would fail the whole job). training/trainlib/errors.py names it too.
BATCH_ACCEPT = "application/jsonlines"
# The application batches concurrent requests (@serve.batch, up to 16): as many records in flight.
CONCURRENT_RECORDS = 16
# SageMaker's real-time limit, which the application enforces too; larger images never reach the job.
MAX_PAYLOAD_MB = 6


def batch_prefix(job: str) -> str:
    """Where everything of a batch job lives in the bucket: its manifest, its record, its outputs."""
    return f"runs/batch/{job}/"


def manifest(bucket: str, input_prefix: str, relative_keys: list[str]) -> bytes:
    """SageMaker's manifest (TransformS3DataSource): the common prefix, then each object relative to it.
    Only these objects are sent, as they were when the job was asked for."""
    return json.dumps([{"prefix": f"s3://{bucket}/{input_prefix}"}, *relative_keys]).encode()


def transform_job_request(
    config: Config, job: str, run: str, project: str, dataset_uri: str | None = None
) -> dict[str, Any]:
    """CreateTransformJob for ``job`` with the version's model (named after its run, as the endpoint's)."""
    prefix = f"s3://{config.data_bucket}/{batch_prefix(job)}"
    return {
        "TransformJobName": names.check(job, "transform job"),
        "ModelName": names.check(run, "model"),
        "MaxConcurrentTransforms": CONCURRENT_RECORDS,
        "MaxPayloadInMB": MAX_PAYLOAD_MB,
        "BatchStrategy": "SingleRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": f"{prefix}manifest.json"}},
            "ContentType": "application/x-image",
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": f"{prefix}out/", "Accept": BATCH_ACCEPT, "AssembleWith": "None"},
        "TransformResources": {"InstanceType": config.batch_instance_type, "InstanceCount": 1},
        "Tags": [*names.tags(run, dataset_uri, role="batch"), {"Key": names.TAG_PROJECT, "Value": project}],
    }
