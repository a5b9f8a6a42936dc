"""The stage's configuration, read once from the environment and checked as a whole.

A missing or malformed variable raises ``ConfigError`` naming it; the handlers log that one line
and send ``pipeline.failed`` when the topic itself is known.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chalice_app import config_values as values
from chalice_app import names
from chalice_app.config_values import ConfigError

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
# Endpoints and model package groups are named <prefix>-<project slug> (at most 63 characters, the slug at
# most 19): the prefix may take 43. Lower case: the IAM policy lower-cases model package ARNs, not AWS.
_PREFIX = re.compile(r"^[a-z0-9](-*[a-z0-9]){0,42}$")
_PROJECT = re.compile(r"^[a-z0-9](-?[a-z0-9]){0,18}$")
APPROVAL_MODES = ("auto", "manual")
# The tuning job's objective: "auto" picks by the classes' balance (sagemaker_requests.objective).
OBJECTIVES = ("auto", "valid:accuracy", "valid:balanced_accuracy", "valid:macro_f1")
# Imbalanced classes in training (train.py --class-balance; training/trainlib/balance.py).
CLASS_BALANCES = ("auto", "weights", "sampler", "off")
SERVING_ENGINES = ("torch", "onnxruntime")

# What train.py gets besides the tuned hyperparameters, unless STATIC_HYPERPARAMETERS overrides.
DEFAULT_STATIC_HYPERPARAMETERS = {
    "arch": "resnet50",
    "weights": "imagenet",
    "train-mode": "head",
    "optimizer": "adamw",
}
# train.py's --arch choices (trainlib.models.ARCHS; tests/test_parity.py keeps the two equal): what
# TUNING_RANGES' "arch" may list. Each trains at its weights' own input size unless "image-size" is set.
ARCHS = ("resnet18", "resnet34", "resnet50", "convnext_tiny", "efficientnet_v2_s", "regnet_y_1_6gf", "vit_b_16")
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_INSTANCES = 20  # per training job (TRAINING_INSTANCE_COUNT, FINAL_INSTANCE_COUNT)
# Search ranges: [min, max] (lr and weight-decay on a log scale, epochs as integers) and the batch sizes.
DEFAULT_TUNING_RANGES: dict[str, list[Any]] = {
    "lr": [0.00001, 0.01],
    "weight-decay": [0.000001, 0.01],
    "epochs": [2, 10],
    "batch-size": [32, 64, 128],
}


# Every variable the stage's configuration reads (docs/configuration.md; tests/test_docs.py keeps both in step).
VARIABLES = tuple(
    """
    API_KEY_REQUIRED APPROVAL_MODE AUDIT AUDIT_FIX AUDIT_IMAGES_PER_INSTANCE AUDIT_IMAGE_URI
    AUDIT_INSTANCE_TYPE AUDIT_MAX_LEAKED_TEST_SHARE AUDIT_MIN_TRAIN_IMAGES BATCH_INSTANCE_TYPE BLOCK_ON_RULE_ISSUES
    CAPTURE_PERCENT CLASS_BALANCE DATASET_PREFIX DATA_BUCKET DEBUGGER_IMAGE_URI DEFAULT_PROJECT ENDPOINT_PREFIX
    FAST_FILE_MIN_GB FINAL_INSTANCE_COUNT GATE_MAX_F1_DROP GATE_MAX_RECALL_DROP IDLE_STOP_HOURS
    INFERENCE_IMAGE_URI INFERENCE_INSTANCE_COUNT INFERENCE_INSTANCE_TYPE MANAGED_DEBUGGER MAX_BODY_BYTES
    MAX_PARALLEL_JOBS MAX_RUNTIME_SECONDS MAX_RUN_COST_USD MAX_TUNING_JOBS MIN_CONFIDENCE NOTIFY_TOPIC_ARN OBJECTIVE
    REVIEW_BELOW ROLLBACK_ALARMS ROLLBACK_LATENCY_MS ROLLOUT_BAKE_SECONDS SAGEMAKER_ROLE_ARN SERVING_ENGINE
    SOURCE_DIR_S3_URI
    STATIC_HYPERPARAMETERS TARGET_PRECISION TRAINING_IMAGE_URI TRAINING_INSTANCE_COUNT TRAINING_INSTANCE_TYPE
    TRAINING_VOLUME_GB TUNING_RANGES TUNING_STRATEGY USE_SPOT
    """.split()
)


@dataclass(frozen=True)
class Config:
    data_bucket: str
    notify_topic_arn: str
    sagemaker_role_arn: str
    training_image_uri: str
    inference_image_uri: str
    source_dir_s3_uri: str
    endpoint_prefix: str
    region: str
    dataset_prefix: str = "datasets/"
    training_instance_type: str = "ml.g4dn.xlarge"
    training_instance_count: int = 1  # every trial's instances; the final job's unless final_instance_count
    final_instance_count: int = 1
    fast_file_min_gb: float = 10.0  # folder datasets from this size are streamed (FastFile), not copied first
    inference_instance_type: str = "ml.m5.large"
    tuning_strategy: str = "Bayesian"
    objective: str = "auto"  # or one of sagemaker_requests.OBJECTIVES
    class_balance: str = "auto"  # train.py --class-balance for every job
    target_precision: float | None = None  # train.py --target-precision: per-class abstention thresholds
    min_confidence: float = 0.0  # train.py --min-confidence: the model's floor, below which it abstains
    max_tuning_jobs: int = 8
    max_parallel_jobs: int = 2
    use_spot: bool = False
    managed_debugger: bool = False
    debugger_image_uri: str = ""
    audit_image_uri: str = ""  # the training image's CPU build for the audit's CPU instance; else the training image
    block_on_rule_issues: bool = False
    max_runtime_seconds: int = 24 * 3600
    volume_size_gb: int = 50
    rollback_alarms: tuple[str, ...] = ()
    static_hyperparameters: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_STATIC_HYPERPARAMETERS))
    tuning_ranges: Mapping[str, list] = field(default_factory=lambda: dict(DEFAULT_TUNING_RANGES))
    max_body_bytes: int = MAX_BODY_BYTES
    api_key_required: bool = False
    default_project: str | None = None
    approval_mode: str = "auto"
    gate_max_f1_drop: float = 0.01
    gate_max_recall_drop: float = 0.05
    inference_instance_count: int = 1
    rollout_bake_seconds: int = 600
    rollback_latency_ms: int = 5000
    max_run_cost_usd: float | None = None
    idle_stop_hours: int = 0  # 0: endpoints are never stopped for idleness
    audit: bool = True
    audit_fix: bool = False
    audit_instance_type: str = "ml.m5.xlarge"
    audit_images_per_instance: int = 100_000  # more images than this: the audit's scan is sharded
    audit_min_train_images: int = 5
    audit_max_leaked_test_share: float = 0.01
    batch_instance_type: str = "ml.m5.xlarge"  # a batch prediction job's (Batch Transform) one instance
    serving_engine: str = "torch"  # or "onnxruntime": the artifact's application runs model.onnx on a CPU
    capture_percent: int = 10  # of the endpoint's requests kept with their answers (0: none, doubtful ones neither)
    review_below: float = 0.6  # an answer whose best probability is under this is kept for review

    @property
    def serverless(self) -> bool:
        return self.inference_instance_type == "serverless"

    @property
    def canary(self) -> bool:
        """SageMaker's canary needs a canary smaller than half the fleet: two instances at least."""
        return not self.serverless and self.inference_instance_count >= 2

    def endpoint(self, project: str) -> str:
        """The project's endpoint, and its model package group: ``<ENDPOINT_PREFIX>-<project>``."""
        return names.project_resource(self.endpoint_prefix, project)


def _tuning_ranges(env: Mapping[str, str]) -> dict[str, list]:
    ranges = {k: list(v) for k, v in DEFAULT_TUNING_RANGES.items()}
    raw = env.get("TUNING_RANGES", "").strip()
    if not raw:
        return ranges
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError("TUNING_RANGES", f"is not JSON ({exc})") from None
    if not isinstance(given, dict) or set(given) - {*DEFAULT_TUNING_RANGES, "arch"}:
        raise ConfigError(
            "TUNING_RANGES", f"must be an object with keys among {', '.join([*DEFAULT_TUNING_RANGES, 'arch'])}"
        )
    for name, value in given.items():
        if name == "arch":  # a categorical: the architectures the trials choose from
            if not isinstance(value, list) or not value or len(set(value)) != len(value) or set(value) - set(ARCHS):
                raise ConfigError("TUNING_RANGES", f"arch must be a list of distinct names among {', '.join(ARCHS)}")
            ranges["arch"] = list(value)
            continue
        if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise ConfigError("TUNING_RANGES", f"{name} must be a list of positive numbers")
        if name != "batch-size" and (len(value) != 2 or value[0] >= value[1]):
            raise ConfigError("TUNING_RANGES", f"{name} must be [min, max] with min < max")
        if name in ("epochs", "batch-size") and not all(float(v).is_integer() for v in value):
            raise ConfigError("TUNING_RANGES", f"{name} must be whole numbers")
        ranges[name] = [int(v) for v in value] if name in ("epochs", "batch-size") else [float(v) for v in value]
    return ranges


def endpoint_prefix(env: Mapping[str, str]) -> str:
    """``ENDPOINT_PREFIX``; ``ENDPOINT_NAME`` (a stage from before projects) is read as the prefix."""
    name = (
        "ENDPOINT_NAME"
        if env.get("ENDPOINT_NAME", "").strip() and not env.get("ENDPOINT_PREFIX", "").strip()
        else "ENDPOINT_PREFIX"
    )
    return values.required(env, name, _PREFIX, "lower-case letters, digits and '-', at most 43 characters")


def _default_project(env: Mapping[str, str]) -> str | None:
    value = env.get("DEFAULT_PROJECT", "").strip()
    if not value:
        return None
    project = names.slug(value)
    if not re.search(r"[a-zA-Z0-9]", value) or not _PROJECT.match(project):
        raise ConfigError("DEFAULT_PROJECT", f"is not a project name: {value!r}")
    return project


def topic_arn(env: Mapping[str, str]) -> str | None:
    """The notification topic, when set and well-formed, even if the rest of the config is not."""
    value = env.get("NOTIFY_TOPIC_ARN", "").strip()
    return value if values.ARN.match(value) else None


# Read when the app is built (its patterns and routes) as well as by load(): one reading each.


def dataset_prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("DATASET_PREFIX", "datasets/").strip() or "datasets/"
    if not prefix.endswith("/") or prefix.startswith("/") or {"*", "\\"} & set(prefix):
        raise ConfigError("DATASET_PREFIX", f"must be a key prefix ending in '/', without * or \\, got {prefix!r}")
    return prefix


def api_key_required(env: Mapping[str, str]) -> bool:
    return values.boolean(env, "API_KEY_REQUIRED", False)


def _static_hyperparameters(env: Mapping[str, str]) -> dict[str, str]:
    static = dict(DEFAULT_STATIC_HYPERPARAMETERS)
    if env.get("STATIC_HYPERPARAMETERS", "").strip():
        try:
            extra = json.loads(env["STATIC_HYPERPARAMETERS"])
        except json.JSONDecodeError as exc:
            raise ConfigError("STATIC_HYPERPARAMETERS", f"is not JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise ConfigError("STATIC_HYPERPARAMETERS", "must be a JSON object of flag names to values")
        static.update({str(k): str(v) for k, v in extra.items()})
        if "arch" in extra and "arch" in _tuning_ranges(env):
            raise ConfigError("STATIC_HYPERPARAMETERS", "sets arch, which TUNING_RANGES tunes: name it in one of them")
    if "arch" in _tuning_ranges(env):
        static.pop("arch", None)  # a tuned hyperparameter cannot also be static
    return static


def _source_dir(env: Mapping[str, str]) -> str:
    source = values.required(env, "SOURCE_DIR_S3_URI")
    if not (source.startswith("s3://") and source.endswith(".tar.gz")):
        raise ConfigError("SOURCE_DIR_S3_URI", f"must be an s3:// URI of a .tar.gz, got {source!r}")
    return source


def _parallelism(env: Mapping[str, str]) -> tuple[int, int]:
    max_jobs = values.integer(env, "MAX_TUNING_JOBS", 8, 1, 500)
    parallel = values.integer(env, "MAX_PARALLEL_JOBS", 2, 1, 100)
    if parallel > max_jobs:
        raise ConfigError("MAX_PARALLEL_JOBS", f"({parallel}) must not exceed MAX_TUNING_JOBS ({max_jobs})")
    return max_jobs, parallel


def load(env: Mapping[str, str]) -> Config:
    """The stage's configuration; raises ``ConfigError`` naming the first bad variable."""
    inference = values.instance(env, "INFERENCE_INSTANCE_TYPE", "ml.m5.large", serverless=True)
    managed = values.boolean(env, "MANAGED_DEBUGGER", False)
    max_jobs, parallel = _parallelism(env)
    instances = values.integer(env, "TRAINING_INSTANCE_COUNT", 1, 1, MAX_INSTANCES)
    return Config(
        data_bucket=values.required(env, "DATA_BUCKET", values.BUCKET, "an S3 bucket name"),
        notify_topic_arn=values.required(env, "NOTIFY_TOPIC_ARN", values.ARN, "an SNS topic ARN"),
        sagemaker_role_arn=values.required(env, "SAGEMAKER_ROLE_ARN", values.ARN, "an IAM role ARN"),
        training_image_uri=values.required(env, "TRAINING_IMAGE_URI", values.IMAGE, "an ECR image URI"),
        inference_image_uri=values.required(env, "INFERENCE_IMAGE_URI", values.IMAGE, "an ECR image URI"),
        source_dir_s3_uri=_source_dir(env),
        endpoint_prefix=endpoint_prefix(env),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        dataset_prefix=dataset_prefix(env),
        training_instance_type=values.instance(env, "TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge"),
        training_instance_count=instances,
        final_instance_count=values.integer(env, "FINAL_INSTANCE_COUNT", instances, 1, MAX_INSTANCES),
        fast_file_min_gb=values.real(env, "FAST_FILE_MIN_GB", 10.0, 0.0, 1_000_000.0),
        inference_instance_type=inference,
        tuning_strategy=values.choice(env, "TUNING_STRATEGY", "Bayesian", choices=STRATEGIES),
        objective=values.choice(env, "OBJECTIVE", "auto", choices=OBJECTIVES),
        class_balance=values.choice(env, "CLASS_BALANCE", "auto", choices=CLASS_BALANCES),
        target_precision=values.real(env, "TARGET_PRECISION", None, 0.01, 1.0),
        min_confidence=values.real(env, "MIN_CONFIDENCE", 0.0, 0.0, 1.0),
        max_tuning_jobs=max_jobs,
        max_parallel_jobs=parallel,
        use_spot=values.boolean(env, "USE_SPOT", False),
        managed_debugger=managed,
        debugger_image_uri=values.image(env, "DEBUGGER_IMAGE_URI", "MANAGED_DEBUGGER=true" if managed else ""),
        audit_image_uri=values.image(env, "AUDIT_IMAGE_URI"),
        block_on_rule_issues=values.boolean(env, "BLOCK_ON_RULE_ISSUES", False),
        max_runtime_seconds=values.integer(env, "MAX_RUNTIME_SECONDS", 24 * 3600, 600, 28 * 24 * 3600),
        volume_size_gb=values.integer(env, "TRAINING_VOLUME_GB", 50, 1, 16384),
        rollback_alarms=tuple(a.strip() for a in env.get("ROLLBACK_ALARMS", "").split(",") if a.strip()),
        static_hyperparameters=_static_hyperparameters(env),
        tuning_ranges=_tuning_ranges(env),
        max_body_bytes=values.integer(env, "MAX_BODY_BYTES", MAX_BODY_BYTES, 1024, 4_400_000),
        api_key_required=api_key_required(env),
        default_project=_default_project(env),
        approval_mode=values.choice(env, "APPROVAL_MODE", "auto", choices=APPROVAL_MODES),
        gate_max_f1_drop=values.real(env, "GATE_MAX_F1_DROP", 0.01, 0.0, 1.0),
        gate_max_recall_drop=values.real(env, "GATE_MAX_RECALL_DROP", 0.05, 0.0, 1.0),
        inference_instance_count=values.integer(env, "INFERENCE_INSTANCE_COUNT", 1, 1, 20),
        rollout_bake_seconds=values.integer(env, "ROLLOUT_BAKE_SECONDS", 600, 0, 3600),
        rollback_latency_ms=values.integer(env, "ROLLBACK_LATENCY_MS", 5000, 10, 600_000),
        idle_stop_hours=values.integer(env, "IDLE_STOP_HOURS", 0, 0, 24 * 30),
        audit=values.boolean(env, "AUDIT", True),
        audit_fix=values.boolean(env, "AUDIT_FIX", False),
        audit_instance_type=values.instance(env, "AUDIT_INSTANCE_TYPE", "ml.m5.xlarge"),
        audit_images_per_instance=values.integer(env, "AUDIT_IMAGES_PER_INSTANCE", 100_000, 1_000, 10_000_000),
        audit_min_train_images=values.integer(env, "AUDIT_MIN_TRAIN_IMAGES", 5, 1, 100_000),
        audit_max_leaked_test_share=values.real(env, "AUDIT_MAX_LEAKED_TEST_SHARE", 0.01, 0.0, 1.0),
        max_run_cost_usd=values.real(env, "MAX_RUN_COST_USD", None, 0.01, 1_000_000.0),
        batch_instance_type=values.instance(env, "BATCH_INSTANCE_TYPE", "ml.m5.xlarge"),
        serving_engine=values.choice(env, "SERVING_ENGINE", "torch", choices=SERVING_ENGINES),
        capture_percent=values.integer(env, "CAPTURE_PERCENT", 10, 0, 100),
        review_below=values.real(env, "REVIEW_BELOW", 0.6, 0.0, 1.0),
    )
