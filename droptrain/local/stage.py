"""The local stack's stage: the variables a Chalice stage would have, named as on AWS.

Light on purpose: ``droptrain config`` and the settings read it without starting anything.
"""

from __future__ import annotations

import json
import time
import uuid

from droptrain.local import defaults
from droptrain.local.sagemaker.resources import ACCOUNT

BUCKET = "droptrain-local"
# Without a word from the machine (droptrain.local.defaults decides for droptrain up), local runs
# train small models from scratch: these override the cloud defaults (ResNet-50 on ImageNet weights).
LOCAL_HYPERPARAMETERS = json.dumps(defaults.SCRATCH)
LOCAL_TUNING_RANGES = json.dumps(defaults.SCRATCH_RANGES)


def local_environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The stage variables of the local runtime (the same names as a Chalice stage's)."""
    env = {
        "DATA_BUCKET": BUCKET,
        "DATASET_PREFIX": "datasets/",
        "NOTIFY_TOPIC_ARN": f"arn:aws:sns:local:{ACCOUNT}:droptrain-local",
        "SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/droptrain-local",
        "TRAINING_IMAGE_URI": "local/droptrain-training:latest",
        "INFERENCE_IMAGE_URI": "local/droptrain-inference:latest",
        "SOURCE_DIR_S3_URI": f"s3://{BUCKET}/code/sourcedir-local.tar.gz",
        "ENDPOINT_PREFIX": "droptrain-local",
        # Four "instances" so that an update rolls out as a one-instance canary (a quarter of the
        # requests) before taking all traffic, each step baking this long under the project's alarms.
        "INFERENCE_INSTANCE_COUNT": "4",
        "ROLLOUT_BAKE_SECONDS": "3",
        # Local endpoints cost nothing but memory: they are not stopped for idleness unless asked.
        "IDLE_STOP_HOURS": "0",
        "TRAINING_INSTANCE_TYPE": "ml.m5.large",
        "INFERENCE_INSTANCE_TYPE": "ml.m5.large",
        "TUNING_STRATEGY": "Bayesian",
        "MAX_TUNING_JOBS": "4",
        "MAX_PARALLEL_JOBS": "1",
        "STATIC_HYPERPARAMETERS": LOCAL_HYPERPARAMETERS,
        "TUNING_RANGES": LOCAL_TUNING_RANGES,
        "AWS_REGION": "local",
    }
    env.update(overrides or {})
    return env


def object_created(key: str, size: int, tag: str) -> dict:
    """The EventBridge event S3 sends when ``key`` is written to the stage's bucket."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "local",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": key, "size": size, "etag": tag, "sequencer": f"{time.time_ns():020X}"},
            "request-id": "local",
            "requester": ACCOUNT,
            "reason": "PutObject",
        },
    }
