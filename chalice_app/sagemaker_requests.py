"""Pure builders: configuration + what an event told us in, boto3 SageMaker request dicts out.

Nothing here talks to AWS, so every request is tested against botocore's service model and the
API's own length/pattern/enum constraints (``tests/orchestrator/test_requests.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalice_app import alarm_requests, names
from chalice_app.config import Config

OBJECTIVE = "valid:accuracy"
# The lines train.py prints (docs/architecture.md): epoch=3 train_loss=0.8123 valid_loss=0.7012 valid_accuracy=0.8120
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"train_loss={_NUMBER}"},
    {"Name": "valid:loss", "Regex": rf"valid_loss={_NUMBER}"},
    {"Name": "valid:accuracy", "Regex": rf"valid_accuracy={_NUMBER}"},
    {"Name": "test:loss", "Regex": rf"test_loss={_NUMBER}"},
    {"Name": "test:accuracy", "Regex": rf"test_accuracy={_NUMBER}"},
]


def _number(value: float) -> str:
    return f"{value:g}"


def tuned_ranges(config: Config) -> dict[str, Any]:
    r = config.tuning_ranges
    return {
        "ContinuousParameterRanges": [
            {"Name": "lr", "MinValue": _number(r["lr"][0]), "MaxValue": _number(r["lr"][1]), "ScalingType": "Logarithmic"},
            {"Name": "weight-decay", "MinValue": _number(r["weight-decay"][0]), "MaxValue": _number(r["weight-decay"][1]),
             "ScalingType": "Logarithmic"},
        ],
        "IntegerParameterRanges": [
            {"Name": "epochs", "MinValue": str(r["epochs"][0]), "MaxValue": str(r["epochs"][1]), "ScalingType": "Linear"},
        ],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": [str(v) for v in r["batch-size"]]}],
    }


def grid_ranges(config: Config) -> dict[str, Any]:
    """Grid search takes categorical ranges only: the same ranges on a coarse grid (3 × 2 points)."""
    r = config.tuning_ranges
    low, high = r["lr"]
    decay = (r["weight-decay"][0] * r["weight-decay"][1]) ** 0.5
    return {"CategoricalParameterRanges": [
        {"Name": "lr", "Values": [_number(low), _number((low * high) ** 0.5), _number(high)]},
        {"Name": "weight-decay", "Values": [_number(decay)]},
        {"Name": "epochs", "Values": [str((r["epochs"][0] + r["epochs"][1]) // 2)]},
        {"Name": "batch-size", "Values": [str(v) for v in r["batch-size"][:2]]},
    ]}


# Where in-job smdebug tensors go inside the container; SageMaker uploads output/data with the job.
IN_JOB_DEBUG_DIR = "/opt/ml/output/data/debug"
DEBUGGER_RULES = ("VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing")


def _s3(config: Config, run: str, *parts: str) -> str:
    return f"s3://{config.data_bucket}/runs/{run}/" + "".join(f"{p}/" for p in parts)


def reports_uri(config: Config, run: str) -> str:
    """Where the final job puts its rule verdicts and profiling report."""
    return _s3(config, run, "reports")


def _strategy_config(config: Config) -> dict[str, Any]:
    strategy = config.tuning_strategy
    job_config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE},
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
        job_config["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": max_epochs(config)}}
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
    hps = dict(config.static_hyperparameters)
    if config.tuning_strategy == "Hyperband":
        hps.setdefault("epochs", str(max_epochs(config)))
    hps.update({
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": config.source_dir_s3_uri,
        "sagemaker_region": config.region,
        "sagemaker_container_log_level": "20",
    })
    return hps


# The training jobs' environment. The training toolkit pip-installs the source dir's requirements.txt;
# PIP_NO_DEPS makes that install exactly the names listed there and never their dependency pins
# (smdebug's would downgrade the container's protobuf: training/requirements.txt).
TRAINING_ENVIRONMENT = {"PIP_NO_DEPS": "1"}
# What AWS's Ray Serve container documentation asks of GPU instances: a host AMI with current NVIDIA drivers.
GPU_INFERENCE_AMI = "al2-ami-sagemaker-inference-gpu-3-1"


def gpu_instance(instance_type: str) -> bool:
    """``ml.g*`` and ``ml.p*`` instances carry NVIDIA GPUs (``ml.inf*``/``ml.trn*`` are Neuron, not CUDA)."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return family[:1] in ("g", "p")


def _training_core(config: Config, dataset_uri: str, output_path: str, checkpoint_path: str,
                   max_runtime: int | None = None) -> dict[str, Any]:
    runtime = max_runtime or config.max_runtime_seconds
    core: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": config.training_image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": config.sagemaker_role_arn,
        "InputDataConfig": [{
            "ChannelName": "training",
            "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": dataset_uri, "S3DataDistributionType": "FullyReplicated",
            }},
        }],
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {
            "InstanceType": config.training_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": config.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
        "EnableManagedSpotTraining": config.use_spot,
        "Environment": dict(TRAINING_ENVIRONMENT),
    }
    if config.use_spot:
        # Spot capacity can take a while; the job may wait up to as long again as it may run.
        core["StoppingCondition"]["MaxWaitTimeInSeconds"] = min(2 * runtime, 28 * 24 * 3600)
        core["CheckpointConfig"] = {"S3Uri": checkpoint_path, "LocalPath": "/opt/ml/checkpoints"}
    return core


def audit_channel(audit_uri: str) -> dict[str, Any]:
    """The audit's report as the ``audit`` channel: train.py drops its cross-split duplicates (AUDIT_FIX)."""
    return {"ChannelName": "audit", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": audit_uri, "S3DataDistributionType": "FullyReplicated"}}}


def tuning_job_request(config: Config, run: str, dataset: names.DatasetRef, plan: Any = None,
                       audit_uri: str | None = None) -> dict[str, Any]:
    """With a ``chalice_app.cost.Plan``, its trial count and runtime limit (a run's budget) replace the
    configured ones; with ``audit_uri``, the trials drop the audit's cross-split duplicates."""
    core = _training_core(config, dataset.uri, _s3(config, run, "tuning"), _s3(config, run, "checkpoints", "tuning"),
                          plan.max_runtime_seconds if plan else None)
    if audit_uri:
        core["InputDataConfig"].append(audit_channel(audit_uri))
    job_config = _strategy_config(config)
    if plan is not None and "MaxNumberOfTrainingJobs" in job_config["ResourceLimits"]:
        job_config["ResourceLimits"] = {"MaxNumberOfTrainingJobs": plan.trials, "MaxParallelTrainingJobs": plan.parallel}
    return {
        "HyperParameterTuningJobName": names.check(run, "tuning job"),
        "HyperParameterTuningJobConfig": job_config,
        "TrainingJobDefinition": {"StaticHyperParameters": static_hyperparameters(config), **core},
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
) -> dict[str, Any]:
    """The best trial's hyperparameters on top of the tuning job's static ones, with debugging. With
    the project's serving ``model.tar.gz`` as the ``baseline`` channel, train.py evaluates that model
    on the same test split (the promotion gate compares the two: ``chalice_app.gate``)."""
    hyperparameters = {k: v for k, v in static.items() if not k.startswith("_")}
    hyperparameters.update({k: v for k, v in tuned.items() if not k.startswith("_")})
    # The job writes its rule verdicts and profiling report here (runs/<run-id>/reports/).
    hyperparameters["reports-uri"] = reports_uri(config, run)
    # The artifact's Ray Serve config asks for a GPU where the endpoint will have one.
    hyperparameters["serving-gpus"] = "1" if not config.serverless and gpu_instance(config.inference_instance_type) else "0"
    request: dict[str, Any] = {
        "TrainingJobName": names.final_job_name(run),
        "HyperParameters": hyperparameters,
        **_training_core(config, dataset_uri, _s3(config, run, "final"), _s3(config, run, "checkpoints", "final"), max_runtime),
        "Tags": names.tags(run, dataset_uri, "final"),
    }
    if audit_uri:
        request["InputDataConfig"].append(audit_channel(audit_uri))
    if baseline_model_data:
        request["InputDataConfig"].append({
            "ChannelName": "baseline",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": baseline_model_data,
                                            "S3DataDistributionType": "FullyReplicated"}},
        })
    if config.managed_debugger:
        request["DebugHookConfig"] = {
            "S3OutputPath": _s3(config, run, "debug"),
            "CollectionConfigurations": [
                {"CollectionName": name, "CollectionParameters": {"save_interval": "10"}}
                for name in ("losses", "weights", "gradients", "biases", "relu_input")
            ],
        }
        request["DebugRuleConfigurations"] = [
            {"RuleConfigurationName": rule, "RuleEvaluatorImage": config.debugger_image_uri,
             "RuleParameters": {"rule_to_invoke": rule}}
            for rule in DEBUGGER_RULES
        ]
        request["ProfilerConfig"] = {"S3OutputPath": _s3(config, run, "profiler"), "ProfilingIntervalInMilliseconds": 500}
        request["ProfilerRuleConfigurations"] = [{
            "RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": config.debugger_image_uri,
            "RuleParameters": {"rule_to_invoke": "ProfilerReport"},
        }]
    else:
        # In-job debugging works in every account; the service-side profiler is off so that
        # accounts closed to SageMaker Debugger/Profiler can still create the job.
        request["HyperParameters"]["debug-out"] = IN_JOB_DEBUG_DIR
        request["ProfilerConfig"] = {"DisableProfiler": True}
    return request


def model_request(config: Config, run: str, model_data_url: str, dataset_uri: str | None) -> dict[str, Any]:
    """The Ray Serve inference container with the final job's ``model.tar.gz``: it reads the archive's own
    ``config.yaml``, so the model needs no environment of its own."""
    return {
        "ModelName": names.check(run, "model"),
        "ExecutionRoleArn": config.sagemaker_role_arn,
        "PrimaryContainer": {"Image": config.inference_image_uri, "ModelDataUrl": model_data_url},
        "Tags": names.tags(run, dataset_uri),
    }


def endpoint_config_request(config: Config, run: str, dataset_uri: str | None) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": alarm_requests.VARIANT, "ModelName": run}
    if config.serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": 6144, "MaxConcurrency": 10}
    else:
        variant.update({"InstanceType": config.inference_instance_type, "InitialInstanceCount": config.inference_instance_count,
                        "InitialVariantWeight": 1.0})
        if gpu_instance(config.inference_instance_type):
            variant["InferenceAmiVersion"] = GPU_INFERENCE_AMI
    return {
        "EndpointConfigName": names.check(run, "endpoint config"),
        "ProductionVariants": [variant],
        "Tags": names.tags(run, dataset_uri),
    }



def create_endpoint_request(config: Config, project: str, run: str, dataset_uri: str | None) -> dict[str, Any]:
    return {
        "EndpointName": config.endpoint(project),
        "EndpointConfigName": run,
        "Tags": [*names.tags(run, dataset_uri), {"Key": names.TAG_PROJECT, "Value": project}],
    }


CANARY_PERCENT = 10


def update_endpoint_request(config: Config, project: str, run: str) -> dict[str, Any]:
    """Blue/green with guardrails on instances: a 10% canary then all when there are two instances or
    more (SageMaker's canary must be at most half the fleet), else all at once; both bake
    ``ROLLOUT_BAKE_SECONDS`` watched by the project's alarms, which roll back. Serverless endpoints
    take no deployment config: they update in place."""
    request: dict[str, Any] = {"EndpointName": config.endpoint(project), "EndpointConfigName": run}
    if config.serverless:
        return request
    routing: dict[str, Any] = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": config.rollout_bake_seconds}
    if config.canary:
        routing = {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": CANARY_PERCENT},
                   "WaitIntervalInSeconds": config.rollout_bake_seconds}
    request["DeploymentConfig"] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": 120,
            "MaximumExecutionTimeoutInSeconds": max(600, 2 * config.rollout_bake_seconds + 1800),
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarm_requests.rollback_alarm_names(config, project)]},
    }
    return request


# -- the dataset audit (a Processing job in the training image) -------------------------------------

PROCESSING = "/opt/ml/processing"
# The source dir is one tar.gz (what the training toolkit unpacks for training jobs): the audit
# unpacks it itself, then runs training/audit.py from it. "$@" are the ContainerArguments.
AUDIT_ENTRYPOINT = ["/bin/sh", "-c", f"mkdir -p {PROCESSING}/code && tar -xzf {PROCESSING}/input/code/*.tar.gz -C {PROCESSING}/code "
                    f"&& cd {PROCESSING}/code && exec python3 audit.py \"$@\"", "audit"]


def audit_job_request(config: Config, run: str, dataset_uri: str) -> dict[str, Any]:
    """``<run-id>-audit``: training/audit.py over the dataset, writing audit.json and audit.html to the
    run's reports (where the next step reads them)."""
    return {
        "ProcessingJobName": names.audit_job_name(run),
        "RoleArn": config.sagemaker_role_arn,
        "AppSpecification": {
            "ImageUri": config.training_image_uri, "ContainerEntrypoint": AUDIT_ENTRYPOINT,
            "ContainerArguments": ["--data-dir", f"{PROCESSING}/input/data", "--out-dir", f"{PROCESSING}/output",
                                   "--min-train-images", str(config.audit_min_train_images),
                                   "--max-leaked-test-share", f"{config.audit_max_leaked_test_share:g}"],
        },
        "ProcessingInputs": [
            {"InputName": "data", "S3Input": {"S3Uri": dataset_uri, "LocalPath": f"{PROCESSING}/input/data",
                                              "S3DataType": "S3Prefix", "S3InputMode": "File"}},
            {"InputName": "code", "S3Input": {"S3Uri": config.source_dir_s3_uri, "LocalPath": f"{PROCESSING}/input/code",
                                              "S3DataType": "S3Prefix", "S3InputMode": "File"}},
        ],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "reports", "S3Output": {
            "S3Uri": reports_uri(config, run), "LocalPath": f"{PROCESSING}/output", "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": config.audit_instance_type,
                                                  "VolumeSizeInGB": config.volume_size_gb}},
        "StoppingCondition": {"MaxRuntimeInSeconds": min(config.max_runtime_seconds, 6 * 3600)},
        "Tags": names.tags(run, dataset_uri, "audit"),
    }
