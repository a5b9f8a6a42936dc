import pytest

from chalice_app import config as config_module
from chalice_app import names
from chalice_app.events import (
    EndpointStateChange,
    EventError,
    ModelPackageStateChange,
    ObjectCreated,
    TrainingJobStateChange,
    TuningJobStateChange,
)
from orchestrator.support import event
from orchestrator.test_requests import BASE_ENV


def test_config_defaults():
    config = config_module.load(BASE_ENV)
    assert (config.dataset_prefix, config.tuning_strategy, config.max_tuning_jobs, config.max_parallel_jobs) == (
        "datasets/",
        "Bayesian",
        8,
        2,
    )
    assert not config.use_spot and not config.managed_debugger and not config.serverless


@pytest.mark.parametrize(
    "variable",
    [
        "DATA_BUCKET",
        "NOTIFY_TOPIC_ARN",
        "SAGEMAKER_ROLE_ARN",
        "TRAINING_IMAGE_URI",
        "INFERENCE_IMAGE_URI",
        "SOURCE_DIR_S3_URI",
        "ENDPOINT_PREFIX",
    ],
)
def test_missing_variable_is_named(variable):
    env = {k: v for k, v in BASE_ENV.items() if k != variable}
    with pytest.raises(config_module.ConfigError, match=f"{variable} is not set") as info:
        config_module.load(env)
    assert info.value.variable == variable


@pytest.mark.parametrize(
    "variable,value",
    [
        ("TUNING_STRATEGY", "Genetic"),
        ("MAX_TUNING_JOBS", "eight"),
        ("MAX_PARALLEL_JOBS", "0"),
        ("USE_SPOT", "maybe"),
        ("NOTIFY_TOPIC_ARN", "droptrain-dev"),
        ("INFERENCE_INSTANCE_TYPE", "m5.large"),
        ("DATASET_PREFIX", "datasets"),
        ("DATASET_PREFIX", "data*sets/"),  # a wildcard in the upload rule's patterns
        ("AUDIT_IMAGE_URI", "pytorch:latest"),
        ("SOURCE_DIR_S3_URI", "/tmp/src.tar.gz"),
        ("MANAGED_DEBUGGER", "true"),
        ("STATIC_HYPERPARAMETERS", "[1]"),
        ("TUNING_RANGES", '{"lr": [0.1, 0.01]}'),
        ("TUNING_RANGES", '{"momentum": [0.1, 0.9]}'),
        ("TUNING_RANGES", '{"epochs": [2.5, 4]}'),
        ("APPROVAL_MODE", "sometimes"),
        ("GATE_MAX_F1_DROP", "a lot"),
        ("GATE_MAX_RECALL_DROP", "2"),
        ("INFERENCE_INSTANCE_COUNT", "0"),
        ("ROLLOUT_BAKE_SECONDS", "-5"),
        ("DEFAULT_PROJECT", "!!!"),
        ("ENDPOINT_PREFIX", "droptrain_dev"),
        # The IAM policy lower-cases model package ARNs, which keep the group's case.
        ("ENDPOINT_PREFIX", "Droptrain-Dev"),
        # Kepler and Volta GPUs: the images' CUDA 13 PyTorch has no kernels for them.
        ("TRAINING_INSTANCE_TYPE", "ml.p3.2xlarge"),
        ("TRAINING_INSTANCE_TYPE", "ml.p3dn.24xlarge"),
        ("AUDIT_INSTANCE_TYPE", "ml.p2.xlarge"),
        ("INFERENCE_INSTANCE_TYPE", "ml.p3.2xlarge"),
    ],
)
def test_malformed_variable_is_named(variable, value):
    with pytest.raises(config_module.ConfigError, match=variable):
        config_module.load({**BASE_ENV, variable: value})


def test_parallel_jobs_cannot_exceed_total():
    with pytest.raises(config_module.ConfigError, match="MAX_PARALLEL_JOBS"):
        config_module.load({**BASE_ENV, "MAX_TUNING_JOBS": "2", "MAX_PARALLEL_JOBS": "3"})


@pytest.mark.parametrize(
    "key,expected",
    [
        ("datasets/dogs/_READY", ("dogs", "folder", "datasets/dogs/")),
        ("datasets/dogs.zip", ("dogs", "archive", "datasets/dogs.zip")),
        ("datasets/Dog Breeds.TAR.GZ", ("Dog Breeds", "archive", "datasets/Dog Breeds.TAR.GZ")),
        ("datasets/dogs.tgz", ("dogs", "archive", "datasets/dogs.tgz")),
        ("datasets/dogs/train/beagle/1.jpg", None),
        ("datasets/dogs/sub/_READY", None),
        ("other/dogs/_READY", None),
        ("datasets/.zip", None),
    ],
)
def test_dataset_keys(key, expected):
    ref = names.parse_dataset_key("b", key, "datasets/")
    assert (ref and (ref.name, ref.kind, ref.prefix)) == expected or (ref is None and expected is None)


def test_run_id_contract():
    ref = names.parse_dataset_key("droptrain-data-dev", "datasets/The Stanford Dogs Dataset (v2)/_READY", "datasets/")
    run = names.run_id(ref, '"d41d8cd98f00b204e9800998ecf8427e"')
    slug, digest = run.rsplit("-", 1)
    assert slug == "the-stanford-dogs-d" and len(slug) <= 19
    assert len(digest) == 8 and run == run.lower() and len(run) <= 32
    assert run == names.run_id(ref, "d41d8cd98f00b204e9800998ecf8427e"), "quoted and bare ETags are the same"
    import hashlib

    expected = hashlib.sha256(
        b"droptrain-data-dev/datasets/The Stanford Dogs Dataset (v2)/_READY/d41d8cd98f00b204e9800998ecf8427e"
    ).hexdigest()[:8]
    assert digest == expected
    assert names.run_id(ref, "other-etag") != run
    assert names.slug("!!!") == "dataset"


def test_name_checks():
    with pytest.raises(names.InvalidNameError, match="longer than 32"):
        names.check("a" * 33, "tuning job")
    with pytest.raises(names.InvalidNameError, match="does not match"):
        names.check("-bad", "model")


def test_events_parse_the_samples():
    created = ObjectCreated.parse(event("s3-object-created.json"))
    assert (created.bucket, created.key, created.etag) == (
        "droptrain-data-dev",
        "datasets/dogs/_READY",
        "d41d8cd98f00b204e9800998ecf8427e",
    )
    tuning = TuningJobStateChange.parse(event("tuning-job-completed.json"))
    assert tuning.status == "Completed" and tuning.tags["droptrain:run-id"] == "dogs-3f9a1c2e"
    child = TrainingJobStateChange.parse(event("training-job-tuning-child.json"))
    assert child.tuning_job_arn and child.tags == {}
    final = TrainingJobStateChange.parse(event("training-job-completed.json"))
    assert final.tags["droptrain:role"] == "final" and final.tuning_job_arn is None
    endpoint = EndpointStateChange.parse(event("endpoint-in-service.json"))
    assert endpoint.status == "IN_SERVICE" and endpoint.config_name == "dogs-3f9a1c2e"
    assert (
        EndpointStateChange.parse(event("endpoint-in-service.json", EndpointStatus="InService")).status == "IN_SERVICE"
    )
    assert endpoint.last_modified == "1795211891000"
    package = ModelPackageStateChange.parse(event("model-package-approved.json"))
    assert (package.group, package.version, package.approval) == ("droptrain-dev-dogs", 3, "Approved")
    assert package.metadata["droptrain:run-id"] == "dogs-1a2b3c4d" and package.model_data.endswith("/model.tar.gz")
    assert package.event_id == "5bf3d1a4-8c2e-4d6b-9a77-0c1f1e2d3b4a"


def test_project_config_defaults_and_names():
    config = config_module.load({**BASE_ENV, "DEFAULT_PROJECT": "Dog Breeds"})
    assert (config.approval_mode, config.gate_max_f1_drop, config.gate_max_recall_drop) == ("auto", 0.01, 0.05)
    assert config.default_project == "dog-breeds" and config.endpoint("dog-breeds") == "droptrain-dev-dog-breeds"
    assert not config.canary and config_module.load({**BASE_ENV, "INFERENCE_INSTANCE_COUNT": "2"}).canary
    assert names.project_of("Dog Breeds (2024)!") == "dog-breeds-2024"
    assert (
        names.project_of_run(
            names.run_id(
                names.DatasetRef("b", "datasets/Dog Breeds/_READY", "Dog Breeds", "folder", "datasets/Dog Breeds/"), "e"
            )
        )
        == "dog-breeds"
    )
    assert names.project_of_resource("droptrain-dev", "droptrain-dev-dogs") == "dogs"
    assert names.project_of_resource("droptrain-dev", "droptrain-prod-dogs") is None


def test_malformed_model_package_events_name_the_field():
    raw = event("model-package-approved.json")
    raw["detail"]["ModelPackageVersion"] = "3"
    with pytest.raises(EventError, match="ModelPackageVersion"):
        ModelPackageStateChange.parse(raw)
    raw = event("model-package-approved.json")
    raw["detail"]["CustomerMetadataProperties"] = ["droptrain:run-id"]
    with pytest.raises(EventError, match="CustomerMetadataProperties"):
        ModelPackageStateChange.parse(raw)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda e: e.pop("detail"), "detail"),
        (lambda e: e["detail"].pop("bucket"), "detail.bucket.name"),
        (lambda e: e["detail"]["object"].update(key=7), "detail.object.key"),
    ],
)
def test_malformed_events_name_the_field(mutate, field):
    raw = event("s3-object-created.json")
    mutate(raw)
    with pytest.raises(EventError, match=field.replace(".", r"\.")):
        ObjectCreated.parse(raw)
