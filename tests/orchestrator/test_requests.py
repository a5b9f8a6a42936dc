"""The SageMaker request builders, each request validated by botocore and by the API's constraints."""

import json
import re

import pytest

from chalice_app import alarm_requests, debugger_requests, endpoint_requests, names, registry_requests
from chalice_app import config as config_module
from chalice_app import sagemaker_requests as requests
from orchestrator.support import validate

BASE_ENV = {
    "DATA_BUCKET": "droptrain-data-dev",
    "NOTIFY_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:droptrain-dev",
    "SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/droptrain-sagemaker-dev",
    "TRAINING_IMAGE_URI": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313",
    "INFERENCE_IMAGE_URI": "763104351884.dkr.ecr.us-east-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
    "SOURCE_DIR_S3_URI": "s3://droptrain-data-dev/code/sourcedir-0123456789abcdef.tar.gz",
    "ENDPOINT_PREFIX": "droptrain-dev",
    "AWS_REGION": "us-east-1",
    # The upload starts the tuning job directly here; the audit step has its own tests (test_audit_step.py).
    "AUDIT": "false",
}
DEBUGGER_IMAGE = "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"
DATASET = names.DatasetRef("droptrain-data-dev", "datasets/dogs/_READY", "dogs", "folder", "datasets/dogs/")


def make_config(**env):
    return config_module.load({**BASE_ENV, **{k: str(v) for k, v in env.items()}})


@pytest.mark.parametrize("strategy", config_module.STRATEGIES)
@pytest.mark.parametrize("spot", [False, True])
def test_tuning_request_is_valid_for_every_strategy(strategy, spot):
    config = make_config(TUNING_STRATEGY=strategy, USE_SPOT=str(spot).lower())
    run = names.run_id(DATASET, "d41d8cd98f00b204e9800998ecf8427e")
    request = requests.tuning_job_request(config, run, DATASET)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    job = request["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == strategy
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid:accuracy"}
    assert job["TrainingJobEarlyStoppingType"] == ("Auto" if strategy in ("Bayesian", "Random") else "Off")
    ranges = {r["Name"]: r for rs in job["ParameterRanges"].values() for r in rs}
    if strategy == "Grid":
        assert set(job["ParameterRanges"]) == {"CategoricalParameterRanges"}, "Grid takes categorical ranges only"
        assert "MaxNumberOfTrainingJobs" not in job["ResourceLimits"]
    else:
        assert ranges["lr"]["ScalingType"] == "Logarithmic" and ranges["weight-decay"]["ScalingType"] == "Logarithmic"
        assert "Values" in ranges["batch-size"]
        assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2}
    if strategy == "Hyperband":
        assert job["StrategyConfig"]["HyperbandStrategyConfig"] == {"MinResource": 1, "MaxResource": 10}
        assert "epochs" not in ranges, "Hyperband's resource is the epoch, so epochs is not tuned"
        assert request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "10"
    elif strategy != "Grid":
        assert ranges["epochs"]["ScalingType"] == "Linear"
    definition = request["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert static["sagemaker_program"] == "train.py"
    assert static["sagemaker_submit_directory"] == BASE_ENV["SOURCE_DIR_S3_URI"]
    assert (
        definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        == "s3://droptrain-data-dev/datasets/dogs/"
    )
    assert definition["OutputDataConfig"]["S3OutputPath"] == f"s3://droptrain-data-dev/runs/{run}/tuning/"
    assert definition["EnableManagedSpotTraining"] is spot
    assert ("CheckpointConfig" in definition) is spot
    assert ("MaxWaitTimeInSeconds" in definition["StoppingCondition"]) is spot
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "droptrain:run-id": run,
        "droptrain:dataset": DATASET.uri,
        "droptrain:role": "tuning",
    }
    # The toolkit installs training/requirements.txt without dependency pins (smdebug's would downgrade protobuf)
    # and without byte-compiling it all.
    assert definition["Environment"] == {"PIP_NO_DEPS": "1", "PIP_COMPILE": "0"}


def test_tuning_ranges_are_configurable():
    config = make_config(TUNING_RANGES='{"lr": [0.001, 0.02], "epochs": [3, 8], "batch-size": [16, 32]}')
    request = requests.tuning_job_request(config, "pets-12345678", DATASET)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    ranges = {r["Name"]: r for rs in request["HyperParameterTuningJobConfig"]["ParameterRanges"].values() for r in rs}
    assert (ranges["lr"]["MinValue"], ranges["lr"]["MaxValue"]) == ("0.001", "0.02")
    assert (ranges["epochs"]["MinValue"], ranges["epochs"]["MaxValue"]) == ("3", "8")
    assert ranges["batch-size"]["Values"] == ["16", "32"]
    assert (ranges["weight-decay"]["MinValue"], ranges["weight-decay"]["MaxValue"]) == ("1e-06", "0.01"), (
        "defaults kept"
    )
    grid = requests.tuning_job_request(
        make_config(TUNING_STRATEGY="Grid", TUNING_RANGES='{"lr": [0.001, 0.1]}'), "pets-12345678", DATASET
    )
    validate("sagemaker", "CreateHyperParameterTuningJob", grid)
    lr = grid["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"][0]
    assert lr == {"Name": "lr", "Values": ["0.001", "0.01", "0.1"]}


def test_metric_definitions_match_train_py_lines(trained_job):
    """The regexes against the lines a real train.py run printed."""
    output = "\n".join(trained_job["lines"])
    found = {d["Name"]: re.findall(d["Regex"], output) for d in requests.METRIC_DEFINITIONS}
    assert len(found["valid:accuracy"]) == 4 and len(found["train:loss"]) == 4 and len(found["valid:loss"]) == 4
    assert len(found["test:accuracy"]) == 1 and len(found["test:loss"]) == 1
    assert all(0.0 <= float(v) <= 1.0 for v in found["valid:accuracy"])
    for objective in requests.OBJECTIVES:  # each one the tuning job may maximise, once an epoch
        assert len(found[objective]) == 4 and all(0.0 <= float(v) <= 1.0 for v in found[objective]), objective
    assert len(found["test:balanced_accuracy"]) == len(found["test:macro_f1"]) == 1
    # Four, not eight: valid_accuracy's regex does not also read valid_balanced_accuracy's value.
    assert len(found["valid:accuracy"]) == 4 and len(found["test:accuracy"]) == 1


@pytest.mark.parametrize(
    "setting, ratio, chosen",
    [
        ("auto", None, "valid:accuracy"),
        ("auto", 2.9, "valid:accuracy"),
        ("auto", 3.0, "valid:balanced_accuracy"),
        ("auto", 40.0, "valid:balanced_accuracy"),
        ("valid:macro_f1", 1.0, "valid:macro_f1"),
        ("valid:accuracy", 40.0, "valid:accuracy"),
    ],
)
def test_the_objective_is_balanced_accuracy_when_the_classes_are_imbalanced(setting, ratio, chosen):
    config = make_config(OBJECTIVE=setting)
    request = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET, imbalance_ratio=ratio)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    assert request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == chosen
    assert chosen in {
        d["Name"] for d in request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    }


def test_an_unknown_objective_is_refused_naming_the_variable():
    with pytest.raises(config_module.ConfigError, match="OBJECTIVE"):
        make_config(OBJECTIVE="valid:loss")


@pytest.mark.parametrize("managed", [False, True])
def test_final_training_request(managed):
    env = {"MANAGED_DEBUGGER": str(managed).lower()}
    if managed:
        env["DEBUGGER_IMAGE_URI"] = DEBUGGER_IMAGE
    config = make_config(**env)
    static = {**requests.static_hyperparameters(config), "_tuning_objective_metric": "valid:accuracy"}
    tuned = {"lr": "0.00074", "batch-size": "64", "epochs": "6", "weight-decay": "0.0001"}
    request = requests.final_training_request(config, "dogs-3f9a1c2e", DATASET.uri, static, tuned)
    validate("sagemaker", "CreateTrainingJob", request)
    assert request["TrainingJobName"] == "dogs-3f9a1c2e-final"
    hps = request["HyperParameters"]
    assert hps["lr"] == "0.00074" and hps["arch"] == "resnet50" and hps["sagemaker_program"] == "train.py"
    assert "_tuning_objective_metric" not in hps
    assert hps["reports-uri"] == "s3://droptrain-data-dev/runs/dogs-3f9a1c2e/reports/"
    assert hps["serving-gpus"] == "0", "ml.m5.large serves on the CPU"
    assert hps["serving-engine"] == "torch", "the default engine"
    onnx = requests.final_training_request(
        make_config(SERVING_ENGINE="onnxruntime"), "dogs-3f9a1c2e", DATASET.uri, static, tuned
    )
    assert onnx["HyperParameters"]["serving-engine"] == "onnxruntime"
    with pytest.raises(config_module.ConfigError, match="SERVING_ENGINE"):
        make_config(SERVING_ENGINE="tensorrt")
    assert request["Environment"] == {"PIP_NO_DEPS": "1", "PIP_COMPILE": "0"}
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["droptrain:role"] == "final"
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == requests.METRIC_DEFINITIONS
    if managed:
        assert {r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]} == set(
            debugger_requests.DEBUGGER_RULES
        )
        assert request["DebugHookConfig"]["S3OutputPath"] == "s3://droptrain-data-dev/runs/dogs-3f9a1c2e/debug/"
        assert request["ProfilerRuleConfigurations"][0]["RuleConfigurationName"] == "ProfilerReport"
        assert "debug-out" not in hps
    else:
        assert "DebugRuleConfigurations" not in request and "DebugHookConfig" not in request
        assert request["ProfilerConfig"] == {"DisableProfiler": True}
        assert hps["debug-out"] == debugger_requests.IN_JOB_DEBUG_DIR


@pytest.mark.parametrize("instance", ["ml.m5.large", "ml.g5.xlarge", "serverless"])
@pytest.mark.parametrize("count", [1, 2])
def test_model_and_endpoint_requests(instance, count):
    config = make_config(
        INFERENCE_INSTANCE_TYPE=instance,
        INFERENCE_INSTANCE_COUNT=count,
        ROLLOUT_BAKE_SECONDS=300,
        ROLLBACK_ALARMS="team-5xx, team-latency",
    )
    artifact = "s3://droptrain-data-dev/runs/dogs-3f9a1c2e/final/dogs-3f9a1c2e-final/output/model.tar.gz"
    model = endpoint_requests.model_request(config, "dogs-3f9a1c2e", artifact, DATASET.uri)
    validate("sagemaker", "CreateModel", model)
    # The Ray Serve container reads the archive's config.yaml: no TorchServe variables, no environment.
    assert model["PrimaryContainer"] == {"Image": BASE_ENV["INFERENCE_IMAGE_URI"], "ModelDataUrl": artifact}
    endpoint_config = endpoint_requests.endpoint_config_request(config, "dogs-3f9a1c2e", DATASET.uri)
    validate("sagemaker", "CreateEndpointConfig", endpoint_config)
    variant = endpoint_config["ProductionVariants"][0]
    assert ("ServerlessConfig" in variant) is (instance == "serverless")
    assert variant.get("InitialInstanceCount") == (None if instance == "serverless" else count)
    # GPU instances need a host AMI whose driver runs the Ray Serve image's CUDA: AL2023's, driver 580.
    assert variant.get("InferenceAmiVersion") == (
        "al2023-ami-sagemaker-inference-gpu-4-1" if instance == "ml.g5.xlarge" else None
    )
    final = requests.final_training_request(
        config, "dogs-3f9a1c2e", DATASET.uri, requests.static_hyperparameters(config), {}
    )
    assert final["HyperParameters"]["serving-gpus"] == ("1" if instance == "ml.g5.xlarge" else "0")
    create = endpoint_requests.create_endpoint_request(config, "dogs", "dogs-3f9a1c2e", DATASET.uri)
    validate("sagemaker", "CreateEndpoint", create)
    assert create["EndpointName"] == "droptrain-dev-dogs"
    assert {"Key": "droptrain:project", "Value": "dogs"} in create["Tags"]
    update = endpoint_requests.update_endpoint_request(config, "dogs", "dogs-3f9a1c2e")
    validate("sagemaker", "UpdateEndpoint", update)
    assert update["EndpointName"] == "droptrain-dev-dogs"
    if instance == "serverless":
        assert "DeploymentConfig" not in update
        return
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    routing = policy["TrafficRoutingConfiguration"]
    # A canary must be at most half the fleet: one instance shifts all at once, and bakes just the same.
    if count == 1:
        assert routing == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300}
    else:
        assert routing == {
            "Type": "CANARY",
            "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1},  # at most half of any fleet of 2 or more
            "WaitIntervalInSeconds": 300,
        }
    assert policy["MaximumExecutionTimeoutInSeconds"] >= 2 * 300 + policy["TerminationWaitInSeconds"]
    assert [a["AlarmName"] for a in update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]] == [
        "droptrain-dev-dogs-5xx-rate",
        "droptrain-dev-dogs-model-latency",
        "team-5xx",
        "team-latency",
    ]
    alarms = alarm_requests.alarm_requests(config, "dogs")
    assert [a["AlarmName"] for a in alarms] == ["droptrain-dev-dogs-5xx-rate", "droptrain-dev-dogs-model-latency"]
    for alarm in alarms:
        validate("cloudwatch", "PutMetricAlarm", alarm)
    rate = alarms[0]
    assert {m["MetricStat"]["Metric"]["MetricName"] for m in rate["Metrics"] if "MetricStat" in m} == {
        "Invocation5XXErrors",
        "Invocations",
    }
    assert [m["Id"] for m in rate["Metrics"] if m["ReturnData"]] == ["rate"], "exactly one series is the alarm's"
    for metric in rate["Metrics"]:
        if "MetricStat" in metric:
            assert {"Name": "EndpointName", "Value": "droptrain-dev-dogs"} in metric["MetricStat"]["Metric"][
                "Dimensions"
            ]
    assert alarms[1]["MetricName"] == "ModelLatency" and alarms[1]["Threshold"] == 5000 * 1000  # microseconds


def test_model_registry_requests():
    config = make_config(INFERENCE_INSTANCE_TYPE="ml.m5.large")
    group = registry_requests.model_package_group_request(config, "dog-breeds", "Dog Breeds (v2) & more")
    validate("sagemaker", "CreateModelPackageGroup", group)
    assert group["ModelPackageGroupName"] == "droptrain-dev-dog-breeds"
    artifact = "s3://droptrain-data-dev/runs/dog-breeds-3f9a1c2e/final/dog-breeds-3f9a1c2e-final/output/model.tar.gz"
    hps = {
        "lr": "0.00074",
        "batch-size": "64",
        "arch": "resnet50",
        "train-mode": "head",
        **{f"z-extra-{i}": "x" * 300 for i in range(60)},
    }
    package = registry_requests.model_package_request(
        config,
        "dog-breeds",
        "dog-breeds-3f9a1c2e",
        artifact,
        "s3://droptrain-data-dev/datasets/Dog Breeds (v2) & more/",
        {"test:accuracy": 0.89123456, "test:loss": 0.4, "macro_f1": 0.8812},
        hps,
    )
    validate("sagemaker", "CreateModelPackage", package)
    assert package["ModelPackageGroupName"] == "droptrain-dev-dog-breeds"
    assert package["ModelApprovalStatus"] == "PendingManualApproval", "the gate or a person approves"
    assert package["ClientToken"] == "dog-breeds-3f9a1c2e", "a repeated event registers the same version"
    container = package["InferenceSpecification"]["Containers"][0]
    assert container == {"Image": BASE_ENV["INFERENCE_IMAGE_URI"], "ModelDataUrl": artifact}
    assert (
        package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
        == "s3://droptrain-data-dev/runs/dog-breeds-3f9a1c2e/reports/evaluation.json"
    )
    metadata = package["CustomerMetadataProperties"]
    assert metadata["droptrain:run-id"] == "dog-breeds-3f9a1c2e" and metadata["hp:lr"] == "0.00074"
    assert metadata["test:accuracy"] == "0.891235" and len(metadata) == 50, "as many as SageMaker takes"
    assert metadata["hp:z-extra-0"] == "x" * 256
    assert (
        names.untag_value(metadata["droptrain:dataset"]) == "s3://droptrain-data-dev/datasets/Dog Breeds (v2) & more/"
    )
    approve = registry_requests.approval_request(
        "arn:aws:sagemaker:us-east-1:123456789012:model-package/droptrain-dev-dog-breeds/3",
        "Approved",
        "droptrain gate: " + "x" * 2000,
    )
    validate("sagemaker", "UpdateModelPackage", approve)


def test_endpoint_prefix_leaves_room_for_every_project():
    longest = "x" * names.SLUG_MAX
    config = make_config(ENDPOINT_PREFIX="p" * 43)
    validate("sagemaker", "CreateEndpoint", endpoint_requests.create_endpoint_request(config, longest, "run-1", None))
    with pytest.raises(config_module.ConfigError, match="ENDPOINT_PREFIX"):
        make_config(ENDPOINT_PREFIX="p" * 44)
    # A stage from before projects named its one endpoint: that name is read as the prefix.
    legacy = {k: v for k, v in BASE_ENV.items() if k != "ENDPOINT_PREFIX"}
    assert config_module.load({**legacy, "ENDPOINT_NAME": "droptrain-old"}).endpoint("dogs") == "droptrain-old-dogs"


def test_validator_catches_what_botocore_skips():
    with pytest.raises(AssertionError, match="longer than 32|does not match"):
        validate("sagemaker", "DescribeHyperParameterTuningJob", {"HyperParameterTuningJobName": "x" * 33})
    with pytest.raises(AssertionError, match="does not match"):
        validate("sagemaker", "DescribeEndpoint", {"EndpointName": "bad_name!"})


@pytest.mark.parametrize("name", ["dogs (v2) & cats, #1!", "it's O'Neil's", "Müller+Söhne", "x" * 180])
def test_dataset_tags_hold_any_name_sagemaker_accepts(name):
    """Tag values allow [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]* up to 256: other characters are encoded, reversibly."""
    dataset = names.DatasetRef("droptrain-data-dev", f"datasets/{name}/_READY", name, "folder", f"datasets/{name}/")
    request = requests.tuning_job_request(make_config(), names.run_id(dataset, "etag"), dataset)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert names.dataset_of_tags(tags) == dataset.uri


def test_a_dataset_name_too_long_to_tag_is_refused():
    name = "(" * 100
    dataset = names.DatasetRef("droptrain-data-dev", f"datasets/{name}/_READY", name, "folder", f"datasets/{name}/")
    with pytest.raises(names.InvalidNameError, match="too long to tag"):
        requests.tuning_job_request(make_config(), names.run_id(dataset, "etag"), dataset)


@pytest.mark.parametrize("setting", ["auto", "weights", "sampler", "off"])
def test_every_training_job_gets_the_class_balance(setting):
    config = make_config(CLASS_BALANCE=setting)
    static = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET)["TrainingJobDefinition"][
        "StaticHyperParameters"
    ]
    assert static["class-balance"] == setting
    final = requests.final_training_request(config, "dogs-3f9a1c2e", DATASET.uri, static, {})
    assert final["HyperParameters"]["class-balance"] == setting
    with pytest.raises(config_module.ConfigError, match="CLASS_BALANCE"):
        make_config(CLASS_BALANCE="oversample")


def test_abstention_settings_reach_every_training_job_and_are_checked():
    plain = requests.tuning_job_request(make_config(), "dogs-3f9a1c2e", DATASET)["TrainingJobDefinition"]
    assert not {"target-precision", "min-confidence"} & set(plain["StaticHyperParameters"]), "off by default"
    config = make_config(TARGET_PRECISION="0.95", MIN_CONFIDENCE="0.3")
    static = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET)["TrainingJobDefinition"][
        "StaticHyperParameters"
    ]
    assert (static["target-precision"], static["min-confidence"]) == ("0.95", "0.3")
    final = requests.final_training_request(config, "dogs-3f9a1c2e", DATASET.uri, static, {})
    assert final["HyperParameters"]["target-precision"] == "0.95"
    for name, bad in (("TARGET_PRECISION", "1.5"), ("TARGET_PRECISION", "0"), ("MIN_CONFIDENCE", "-0.2")):
        with pytest.raises(config_module.ConfigError, match=name):
            make_config(**{name: bad})


def test_the_architecture_can_be_a_categorical_of_the_tuning_job():
    config = make_config(TUNING_RANGES=json.dumps({"arch": ["resnet50", "convnext_tiny", "vit_b_16"]}))
    definition = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET)["TrainingJobDefinition"]
    request = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    ranges = request["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"]
    assert {"Name": "arch", "Values": ["resnet50", "convnext_tiny", "vit_b_16"]} in ranges
    assert "arch" not in definition["StaticHyperParameters"], "a tuned hyperparameter is not also static"
    assert "image-size" not in definition["StaticHyperParameters"], "each architecture at its own input size"
    grid = make_config(TUNING_STRATEGY="Grid", TUNING_RANGES=json.dumps({"arch": ["resnet50", "regnet_y_1_6gf"]}))
    grid_ranges = requests.tuning_job_request(grid, "dogs-3f9a1c2e", DATASET)["HyperParameterTuningJobConfig"]
    assert {"Name": "arch", "Values": ["resnet50", "regnet_y_1_6gf"]} in grid_ranges["ParameterRanges"][
        "CategoricalParameterRanges"
    ]
    for bad in (["resnet50", "resnet50"], ["alexnet"], [], "resnet50"):
        with pytest.raises(config_module.ConfigError, match="TUNING_RANGES"):
            make_config(TUNING_RANGES=json.dumps({"arch": bad}))
    with pytest.raises(config_module.ConfigError, match="STATIC_HYPERPARAMETERS"):
        make_config(
            TUNING_RANGES=json.dumps({"arch": ["resnet50", "vit_b_16"]}),
            STATIC_HYPERPARAMETERS=json.dumps({"arch": "resnet18"}),
        )
