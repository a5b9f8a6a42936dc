"""Every request builder's output across the configuration space, validated against botocore's models
(types, required members, and the lengths, patterns, enums and ranges botocore leaves unchecked): the
strategies, spot, the managed debugger, CPU/GPU/serverless endpoints, one instance or a fleet, bake
times at their limits, training on one to 20 instances of one or several GPUs, copied or streamed
input, the audit (one instance, or sharded then merged), a run's budget plan, the China partition,
and dataset names from short to the longest a key allows. One test per combination would be
hundreds of tests; one test walks them and names every invalid request it finds."""

from __future__ import annotations

import itertools

from chalice_app import alarm_requests, audit_requests, cost, endpoint_requests, names, registry_requests
from chalice_app import sagemaker_requests as requests
from orchestrator.support import validate
from orchestrator.test_requests import DEBUGGER_IMAGE, make_config

CHINA = {
    "AWS_REGION": "cn-north-1",
    "NOTIFY_TOPIC_ARN": "arn:aws-cn:sns:cn-north-1:123456789012:droptrain-dev",
    "SAGEMAKER_ROLE_ARN": "arn:aws-cn:iam::123456789012:role/droptrain-sagemaker-dev",
    "TRAINING_IMAGE_URI": "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-training:2.10.0-gpu-py313",
    "INFERENCE_IMAGE_URI": "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/ray:serve-ml-sagemaker-cpu-v1.4",
}
DATASETS = ("dogs", "a" * 19, "x1-y2")


def _space():
    # The training instances and the dataset's name alternate rather than multiply: what they change
    # (the GPU's hyperparameters, the launcher, the names' lengths) does not depend on the other settings.
    for number, (strategy, spot, managed, inference, count, bake, region) in enumerate(
        itertools.product(
            ("Bayesian", "Random", "Hyperband", "Grid"),
            (False, True),
            (False, True),
            ("ml.m5.large", "ml.g5.xlarge", "serverless"),
            (1, 2),
            (0, 3600),
            ("us-east-1", "cn-north-1"),
        )
    ):
        if inference == "serverless" and count > 1:
            continue
        training = ("ml.g4dn.xlarge", "ml.m5.xlarge", "ml.g5.12xlarge")[number % 3]
        trials, final = ((1, 1), (20, 20), (2, 1), (1, 4))[number % 4]
        env = {
            "TUNING_STRATEGY": strategy,
            "USE_SPOT": str(spot).lower(),
            "MANAGED_DEBUGGER": str(managed).lower(),
            "INFERENCE_INSTANCE_TYPE": inference,
            "INFERENCE_INSTANCE_COUNT": count,
            "ROLLOUT_BAKE_SECONDS": bake,
            "TRAINING_INSTANCE_TYPE": training,
            "TRAINING_INSTANCE_COUNT": trials,
            "FINAL_INSTANCE_COUNT": final,
            "AUDIT": "true",
            **(CHINA if region == "cn-north-1" else {}),
        }
        if managed:
            env["DEBUGGER_IMAGE_URI"] = DEBUGGER_IMAGE.replace("us-east-1.amazonaws.com", "cn-north-1.amazonaws.com.cn")
        yield env, DATASETS[number % len(DATASETS)]


def _requests(config, project: str):
    """(service, operation, request) for every builder, as the pipeline calls them."""
    bucket = config.data_bucket
    dataset = names.DatasetRef(bucket, f"datasets/{project}/_READY", project, "folder", f"datasets/{project}/")
    run = names.run_id(dataset, "d41d8cd98f00b204e9800998ecf8427e")
    audit = f"s3://{bucket}/runs/{run}/reports/audit.json"
    plan = cost.Plan(3, 1, 3600, True)  # a budget that cut the trials and their runtime
    static = requests.static_hyperparameters(config)
    tuned = {"lr": "0.001", "epochs": "3", "batch-size": "32", "weight-decay": "0.0001"}
    model = f"s3://{bucket}/runs/{run}/final/output/model.tar.gz"
    yield "sagemaker", "CreateProcessingJob", audit_requests.audit_job_request(config, run, dataset.uri)
    scan = audit_requests.audit_job_request(config, run, dataset.uri, 10**12, 20)  # sharded over 20 instances
    yield "sagemaker", "CreateProcessingJob", scan
    yield "sagemaker", "CreateProcessingJob", audit_requests.audit_merge_request(config, run, scan["Tags"])
    yield "sagemaker", "CreateHyperParameterTuningJob", requests.tuning_job_request(config, run, dataset)
    yield "sagemaker", "CreateHyperParameterTuningJob", requests.tuning_job_request(config, run, dataset, plan, audit)
    large = int(config.fast_file_min_gb * 1024**3)  # streamed: FastFile
    yield (
        "sagemaker",
        "CreateHyperParameterTuningJob",
        requests.tuning_job_request(config, run, dataset, None, None, large),
    )
    for mode in ("File", "FastFile"):
        yield (
            "sagemaker",
            "CreateTrainingJob",
            requests.final_training_request(config, run, dataset.uri, static, tuned, model, 7200, audit, mode),
        )
    yield (
        "sagemaker",
        "CreateModelPackageGroup",
        registry_requests.model_package_group_request(config, project, project),
    )
    yield (
        "sagemaker",
        "CreateModelPackage",
        registry_requests.model_package_request(
            config, project, run, model, dataset.uri, {"test:accuracy": 0.9, "test:macro_f1": 0.88}, tuned
        ),
    )
    yield "sagemaker", "CreateModel", endpoint_requests.model_request(config, run, model, dataset.uri)
    yield "sagemaker", "CreateEndpointConfig", endpoint_requests.endpoint_config_request(config, run, dataset.uri)
    yield "sagemaker", "CreateEndpoint", endpoint_requests.create_endpoint_request(config, project, run, dataset.uri)
    yield "sagemaker", "UpdateEndpoint", endpoint_requests.update_endpoint_request(config, project, run)
    for alarm in alarm_requests.alarm_requests(config, project):
        yield "cloudwatch", "PutMetricAlarm", alarm


def test_every_request_across_the_configuration_space_is_valid():
    checked, invalid = 0, []
    for env, project in _space():
        for service, operation, request in _requests(make_config(**env), project):
            try:
                validate(service, operation, request)
            except AssertionError as exc:
                invalid.append(f"{operation} with {env} for {project}: {exc}")
            checked += 1
    assert invalid == [], f"{len(invalid)} of {checked} requests invalid; first: {invalid[:3]}"
    assert checked > 3000, "the space is walked, not skipped"
    assert {p for _, p in _space()} == set(DATASETS) and len(list(_space())) == 320
