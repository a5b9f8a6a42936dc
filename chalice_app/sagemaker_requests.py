"""Pure builders: configuration + what an event told us in, boto3 SageMaker request dicts out.

Nothing here talks to AWS, so every request is tested against botocore's service model and the
API's own length/pattern/enum constraints (``tests/orchestrator/test_requests.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalice_app import debugger_requests as debugger
from chalice_app import names, scaling
from chalice_app.config import Config

OBJECTIVE = "valid:accuracy"  # with classes alike in number; OBJECTIVE=auto picks (``objective``)
OBJECTIVES = ("valid:accuracy", "valid:balanced_accuracy", "valid:macro_f1")
# Classes this unequal (the largest training class over the smallest) make accuracy a poor guide: a
# model that ignores the rare classes scores well. OBJECTIVE=auto then tunes for balanced accuracy.
IMBALANCED_RATIO = 3.0
# The lines train.py prints (docs/architecture.md): epoch=3 train_loss=0.8123 valid_loss=0.7012
# valid_accuracy=0.8120 valid_balanced_accuracy=0.7731 valid_macro_f1=0.7702, then test_loss=... likewise.
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"train_loss={_NUMBER}"},
    *(
        {"Name": f"{split}:{metric}", "Regex": rf"{split}_{metric}={_NUMBER}"}
        for split in ("valid", "test")
        for metric in ("loss", "accuracy", "balanced_accuracy", "macro_f1")
    ),
]


def objective(config: Config, imbalance_ratio: float | None = None) -> str:
    """The metric the tuning job maximises: ``OBJECTIVE``, or with ``auto`` balanced accuracy when the
    training classes are ``IMBALANCED_RATIO`` times or more apart, else accuracy."""
    if config.objective != "auto":
        return config.objective
    imbalanced = imbalance_ratio is not None and imbalance_ratio >= IMBALANCED_RATIO
    return "valid:balanced_accuracy" if imbalanced else OBJECTIVE


def _number(value: float) -> str:
    return f"{value:g}"


def tuned_ranges(config: Config) -> dict[str, Any]:
    r = config.tuning_ranges
    return {
        "ContinuousParameterRanges": [
            {
                "Name": "lr",
                "MinValue": _number(r["lr"][0]),
                "MaxValue": _number(r["lr"][1]),
                "ScalingType": "Logarithmic",
            },
            {
                "Name": "weight-decay",
                "MinValue": _number(r["weight-decay"][0]),
                "MaxValue": _number(r["weight-decay"][1]),
                "ScalingType": "Logarithmic",
            },
        ],
        "IntegerParameterRanges": [
            {
                "Name": "epochs",
                "MinValue": str(r["epochs"][0]),
                "MaxValue": str(r["epochs"][1]),
                "ScalingType": "Linear",
            },
        ],
        "CategoricalParameterRanges": [
            {"Name": "batch-size", "Values": [str(v) for v in r["batch-size"]]},
            *([{"Name": "arch", "Values": list(r["arch"])}] if "arch" in r else []),
        ],
    }


def grid_ranges(config: Config) -> dict[str, Any]:
    """Grid search takes categorical ranges only: the same ranges on a coarse grid (3 × 2 points)."""
    r = config.tuning_ranges
    low, high = r["lr"]
    decay = (r["weight-decay"][0] * r["weight-decay"][1]) ** 0.5
    return {
        "CategoricalParameterRanges": [
            {"Name": "lr", "Values": [_number(low), _number((low * high) ** 0.5), _number(high)]},
            {"Name": "weight-decay", "Values": [_number(decay)]},
            {"Name": "epochs", "Values": [str((r["epochs"][0] + r["epochs"][1]) // 2)]},
            {"Name": "batch-size", "Values": [str(v) for v in r["batch-size"][:2]]},
            *([{"Name": "arch", "Values": list(r["arch"])}] if "arch" in r else []),
        ]
    }


def _s3(config: Config, run: str, *parts: str) -> str:
    return f"s3://{config.data_bucket}/runs/{run}/" + "".join(f"{p}/" for p in parts)


def reports_uri(config: Config, run: str) -> str:
    """Where the final job puts its rule verdicts and profiling report."""
    return _s3(config, run, "reports")


def _strategy_config(config: Config, metric: str = OBJECTIVE) -> dict[str, Any]:
    strategy = config.tuning_strategy
    job_config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": metric},
        "ParameterRanges": grid_ranges(config) if strategy == "Grid" else tuned_ranges(config),
        # Hyperband stops trials itself and Grid runs every combination: early stopping is for the others.
        "TrainingJobEarlyStoppingType": "Auto" if strategy in ("Bayesian", "Random") else "Off",
    }
    if strategy == "Grid":
        # The grid sets the number of trials; only the parallelism is ours to limit.
        job_config["ResourceLimits"] = {"MaxParallelTrainingJobs": config.max_parallel_jobs}
    else:
        job_config["ResourceLimits"] = {
            "MaxNumberOfTrainingJobs": config.max_tuning_jobs,
            "MaxParallelTrainingJobs": config.max_parallel_jobs,
        }
    if strategy == "Hyperband":
        # Hyperband's resource is the epoch: train.py reports valid:accuracy after each one.
        job_config["StrategyConfig"] = {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": max_epochs(config)}
        }
        job_config["ParameterRanges"] = {k: v for k, v in tuned_ranges(config).items() if k != "IntegerParameterRanges"}
    return job_config


def configured_trials(config: Config) -> int:
    """How many trials the tuning job runs at most: Grid runs every combination of its grid."""
    if config.tuning_strategy != "Grid":
        return config.max_tuning_jobs
    count = 1
    for parameter in grid_ranges(config)["CategoricalParameterRanges"]:
        count *= len(parameter["Values"])
    return count


def max_epochs(config: Config) -> int:
    return int(config.tuning_ranges["epochs"][1])


def static_hyperparameters(config: Config) -> dict[str, str]:
    hps = {"class-balance": config.class_balance, **config.static_hyperparameters}
    if config.target_precision is not None:  # what the trained model abstains by (trainlib.calibration)
        hps["target-precision"] = str(config.target_precision)
    if config.min_confidence:
        hps["min-confidence"] = str(config.min_confidence)
    if config.tuning_strategy == "Hyperband":
        hps.setdefault("epochs", str(max_epochs(config)))
    hps.update(
        {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": config.source_dir_s3_uri,
            "sagemaker_region": config.region,
            "sagemaker_container_log_level": "20",
        }
    )
    return hps


# The training jobs' environment. The training toolkit pip-installs the source dir's requirements.txt
# at the start of every job, on every host; PIP_NO_DEPS makes that install exactly the names listed there
# and never their dependency pins (smdebug's would downgrade the container's protobuf: training/requirements.txt).
# PIP_COMPILE=0 leaves out byte-compiling every module of what it installs (sympy, matplotlib, onnx...:
# most of the install's time, billed to each job); Python compiles the few a job imports as it imports them.
TRAINING_ENVIRONMENT = {"PIP_NO_DEPS": "1", "PIP_COMPILE": "0"}


def input_mode(config: Config, kind: str, size: int | None) -> str:
    """How the training channel reaches the instances: a folder dataset of ``FAST_FILE_MIN_GB`` or more is
    streamed from S3 on first read (FastFile), so the first step does not wait for a copy of all of it;
    a smaller folder, one of unknown size, and an archive (one object train.py extracts) are copied (File)."""
    if kind == "folder" and size is not None and size >= config.fast_file_min_gb * 1024**3:
        return "FastFile"
    return "File"


def distributed(hyperparameters: Mapping[str, str], instance_type: str, instances: int) -> dict[str, str]:
    """``hyperparameters`` with the container's torchrun launcher asked for exactly when the job runs more
    than one process (``chalice_app.scaling``); one process on one instance keeps the plain launch."""
    out = {k: v for k, v in hyperparameters.items() if k != scaling.LAUNCHER}
    if scaling.launcher(instance_type, instances):
        out[scaling.LAUNCHER] = "true"
    return out


@dataclass(frozen=True)
class Job:
    """What differs between the trials and the final job: where they write, how long and how wide they run."""

    output: str
    checkpoints: str
    max_runtime: int | None = None
    instances: int = 1
    input_mode: str = "File"


def _training_core(config: Config, dataset_uri: str, job: Job) -> dict[str, Any]:
    runtime = job.max_runtime or config.max_runtime_seconds
    core: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": config.training_image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": config.sagemaker_role_arn,
        "InputDataConfig": [channel("training", dataset_uri, job.input_mode)],
        "OutputDataConfig": {"S3OutputPath": job.output},
        "ResourceConfig": {
            "InstanceType": config.training_instance_type,
            "InstanceCount": job.instances,
            "VolumeSizeInGB": config.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
        "EnableManagedSpotTraining": config.use_spot,
        "Environment": dict(TRAINING_ENVIRONMENT),
    }
    if config.use_spot:
        # Spot capacity can take a while; the job may wait up to as long again as it may run.
        core["StoppingCondition"]["MaxWaitTimeInSeconds"] = min(2 * runtime, 28 * 24 * 3600)
        # train.py keeps each job's checkpoints in a folder named after the job: a tuning job's trials
        # share this prefix and each writes under runs/<run>/checkpoints/<stage>/<job>/.
        core["CheckpointConfig"] = {"S3Uri": job.checkpoints, "LocalPath": "/opt/ml/checkpoints"}
    return core


def channel(name: str, uri: str, mode: str = "File") -> dict[str, Any]:
    """An S3 prefix as an input channel, whole on every instance: copied (File) or streamed (FastFile)."""
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    out: dict[str, Any] = {"ChannelName": name, "DataSource": {"S3DataSource": source}}
    if mode != "File":
        out["InputMode"] = mode
    return out


def training_input_mode(job: Mapping[str, Any]) -> str:
    """How a training job (or a tuning job's definition) reads its ``training`` channel."""
    for entry in job.get("InputDataConfig", []):
        if entry.get("ChannelName") == "training":
            return entry.get("InputMode") or job.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File")
    return "File"


def audit_channel(audit_uri: str) -> dict[str, Any]:
    """The audit's report as the ``audit`` channel: train.py drops its cross-split duplicates (AUDIT_FIX)."""
    return channel("audit", audit_uri)


def tuning_job_request(
    config: Config,
    run: str,
    dataset: names.DatasetRef,
    plan: Any = None,
    audit_uri: str | None = None,
    dataset_bytes: int | None = None,
    imbalance_ratio: float | None = None,
) -> dict[str, Any]:
    """With a ``chalice_app.cost.Plan``, its trial count and runtime limit (a run's budget) replace the
    configured ones; with ``audit_uri``, the trials drop the audit's cross-split duplicates; the dataset's
    size (``dataset_bytes``) decides its input mode, its classes' imbalance the objective."""
    job = Job(
        _s3(config, run, "tuning"),
        _s3(config, run, "checkpoints", "tuning"),
        plan.max_runtime_seconds if plan else None,
        config.training_instance_count,
        input_mode(config, dataset.kind, dataset_bytes),
    )
    core = _training_core(config, dataset.uri, job)
    static = distributed(static_hyperparameters(config), config.training_instance_type, job.instances)
    if audit_uri:
        core["InputDataConfig"].append(audit_channel(audit_uri))
    job_config = _strategy_config(config, objective(config, imbalance_ratio))
    if plan is not None and "MaxNumberOfTrainingJobs" in job_config["ResourceLimits"]:
        job_config["ResourceLimits"] = {
            "MaxNumberOfTrainingJobs": plan.trials,
            "MaxParallelTrainingJobs": plan.parallel,
        }
    return {
        "HyperParameterTuningJobName": names.check(run, "tuning job"),
        "HyperParameterTuningJobConfig": job_config,
        "TrainingJobDefinition": {"StaticHyperParameters": static, **core},
        "Tags": names.tags(run, dataset.uri, "tuning"),
    }


def final_training_request(
    config: Config,
    run: str,
    dataset_uri: str,
    static: Mapping[str, str],
    tuned: Mapping[str, str],
    baseline_model_data: str | None = None,
    max_runtime: int | None = None,
    audit_uri: str | None = None,
    mode: str = "File",
) -> dict[str, Any]:
    """The best trial's hyperparameters on top of the tuning job's static ones, with debugging, on
    ``FINAL_INSTANCE_COUNT`` instances, its dataset read as the trials read it (``mode``). With the
    project's serving ``model.tar.gz`` as the ``baseline`` channel, train.py evaluates that model on the
    same test split (the promotion gate compares the two: ``chalice_app.gate``)."""
    hyperparameters = {k: v for k, v in static.items() if not k.startswith("_")}
    hyperparameters.update({k: v for k, v in tuned.items() if not k.startswith("_")})
    hyperparameters = distributed(hyperparameters, config.training_instance_type, config.final_instance_count)
    # The job writes its rule verdicts, profiling report and exported models here (runs/<run-id>/reports/).
    hyperparameters["reports-uri"] = reports_uri(config, run)
    hyperparameters["export"] = "on"  # model.onnx and model.pt beside model.pth, checked (trainlib.export)
    hyperparameters["serving-engine"] = config.serving_engine  # onnxruntime: the endpoint runs model.onnx
    # The artifact's Ray Serve config asks for a GPU where the endpoint will have one.
    hyperparameters["serving-gpus"] = (
        "1" if not config.serverless and scaling.gpu_instance(config.inference_instance_type) else "0"
    )
    request: dict[str, Any] = {
        "TrainingJobName": names.final_job_name(run),
        "HyperParameters": hyperparameters,
        **_training_core(
            config,
            dataset_uri,
            Job(
                _s3(config, run, "final"),
                _s3(config, run, "checkpoints", "final"),
                max_runtime,
                config.final_instance_count,
                mode,
            ),
        ),
        "Tags": names.tags(run, dataset_uri, "final"),
    }
    if audit_uri:
        request["InputDataConfig"].append(audit_channel(audit_uri))
    if baseline_model_data:
        request["InputDataConfig"].append(channel("baseline", baseline_model_data))
    if config.managed_debugger:
        request.update(debugger.managed(config, _s3(config, run, "debug"), _s3(config, run, "profiler")))
    else:
        # In-job debugging works in every account; the service-side profiler is off so that
        # accounts closed to SageMaker Debugger/Profiler can still create the job.
        request["HyperParameters"]["debug-out"] = debugger.IN_JOB_DEBUG_DIR
        request["ProfilerConfig"] = {"DisableProfiler": True}
    return request
