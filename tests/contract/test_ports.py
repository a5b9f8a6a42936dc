"""One contract, two families of adapters: what chalice_app.ports promises, held by the AWS adapters
(over moto, with a Stubber where moto falls short of AWS) and by the local runtime's adapters alike.
A difference between them is a bug in one of them."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from chalice_app import alarm_requests, batch_requests, endpoint_requests, names, registry_requests
from chalice_app import sagemaker_requests as requests
from chalice_app.adapters.errors import AdapterError, NotFoundError
from chalice_app.adapters.runtime import EndpointNotFoundError, RuntimeAdapter
from chalice_app.adapters.s3 import S3Adapter
from chalice_app.adapters.sagemaker import SageMakerAdapter
from chalice_app.adapters.sns import SnsAdapter
from helpers import DEADLINE
from orchestrator.test_requests import BASE_ENV, make_config

BUCKET = BASE_ENV["DATA_BUCKET"]
TOPIC = BASE_ENV["NOTIFY_TOPIC_ARN"]
FAMILIES = ["aws", "local"]


@pytest.fixture
def aws(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        boto3.client("sns").create_topic(Name=TOPIC.rsplit(":", 1)[1])
        yield


@pytest.fixture
def local(tmp_path):
    from droptrain.local import sagemaker as local_sagemaker
    from droptrain.local.aws.bucket import LocalBucket
    from droptrain.local.engines.serving import RayServe
    from droptrain.local.sagemaker.endpoint import LocalEndpoints
    from droptrain.local.store import Store

    store, bucket = Store(tmp_path / "state.db"), LocalBucket(tmp_path / "bucket", BUCKET)
    endpoints = LocalEndpoints(store, bucket, tmp_path / "endpoints", lambda e: None, RayServe())
    sagemaker = local_sagemaker.LocalSageMaker(store, bucket, tmp_path / "jobs", lambda e: None, endpoints)
    yield {"bucket": bucket, "store": store, "endpoints": endpoints, "sagemaker": sagemaker, "tmp": tmp_path}
    sagemaker.stop()
    endpoints.join(DEADLINE)


@pytest.fixture(params=FAMILIES)
def store(request):
    if request.param == "aws":
        request.getfixturevalue("aws")
        return S3Adapter(boto3.client("s3"), sleep=lambda s: None)
    return request.getfixturevalue("local")["bucket"]


# -- the object store -------------------------------------------------------------------------------


def test_missing_objects_are_not_found(store):
    for read in (
        lambda: store.get(BUCKET, "runs/nope.json"),
        lambda: store.head(BUCKET, "runs/nope.json"),
        lambda: store.read_range(BUCKET, "runs/nope.json", 0, 9),
    ):
        with pytest.raises(NotFoundError):
            read()
    with pytest.raises(NotFoundError):
        store.get("another-bucket-entirely", "runs/x.json")
    store.delete(BUCKET, "runs/nope.json")  # deleting what is not there is no error


def test_write_once_then_read_back(store):
    assert store.put_if_absent(BUCKET, "runs/r/notifications/a.json", b'{"n": 1}') is True
    assert store.put_if_absent(BUCKET, "runs/r/notifications/a.json", b'{"n": 2}') is False, "the first write stands"
    assert store.get(BUCKET, "runs/r/notifications/a.json") == b'{"n": 1}'
    assert store.head(BUCKET, "runs/r/notifications/a.json") == {
        "size": 8,
        "etag": hashlib.md5(b'{"n": 1}').hexdigest(),
    }
    store.delete(BUCKET, "runs/r/notifications/a.json")
    assert store.put_if_absent(BUCKET, "runs/r/notifications/a.json", b"{}") is True, "gone, so writable again"


def test_folders_under_a_prefix(store):
    for key in (
        "runs/a-1/notifications/x.json",
        "runs/a-1/reports/r.json",
        "runs/b-2/x.json",
        "runs/top.json",
        "datasets/d/_READY",
    ):
        store.put_if_absent(BUCKET, key, b"{}")
    assert store.list_prefixes(BUCKET, "runs/") == ["runs/a-1/", "runs/b-2/"], "one level, objects beside them left out"
    assert store.list_prefixes(BUCKET, "runs/a-1/") == ["runs/a-1/notifications/", "runs/a-1/reports/"]
    assert store.list_prefixes(BUCKET, "nothing/") == []


def test_ranged_reads_and_a_zip_read_through_them(store):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for member in ("dogs/train/a/1.jpg", "dogs/train/b/2.jpg"):
            zf.writestr(member, b"\xff\xd8\xff" + bytes(50))
    data = buffer.getvalue()
    assert store.put_if_absent(BUCKET, "datasets/dogs.zip", data)
    assert store.read_range(BUCKET, "datasets/dogs.zip", 0, 3) == data[:4]
    assert store.read_range(BUCKET, "datasets/dogs.zip", len(data) - 5, len(data) - 1) == data[-5:]
    with zipfile.ZipFile(store.open_ranged(BUCKET, "datasets/dogs.zip", len(data))) as zf:
        assert zf.namelist() == ["dogs/train/a/1.jpg", "dogs/train/b/2.jpg"]


def test_listing_is_by_prefix_in_key_order(store):
    for key in (
        "datasets/a/_READY",
        "datasets/a-b/x.jpg",
        "datasets/a/train/c/1.jpg",
        "runs/r/x.json",
        "datasets/b.zip",
    ):
        store.put_if_absent(BUCKET, key, b"12345")
    listed = list(store.list_objects(BUCKET, "datasets/a"))
    assert listed == [("datasets/a-b/x.jpg", 5), ("datasets/a/_READY", 5), ("datasets/a/train/c/1.jpg", 5)]
    assert list(store.list_objects(BUCKET, "nothing/")) == []


# -- SageMaker -----------------------------------------------------------------------------------

CONFIG = make_config()
RUN = "pets-1a2b3c4d"
DATASET = names.DatasetRef(BUCKET, "datasets/pets/_READY", "pets", "folder", "datasets/pets/")
# What SageMaker answers a second create with, where moto does not (it creates again).
ALREADY_EXISTS = {
    "create_model": (
        "ValidationException",
        'Cannot create already existing model "arn:aws:sagemaker:us-east-1:123456789012:model/x".',
    ),
    "create_endpoint_config": ("ValidationException", 'Cannot create already existing endpoint configuration "arn:x".'),
    "create_endpoint": ("ValidationException", 'Cannot create already existing endpoint "arn:x".'),
    "create_training_job": (
        "ResourceInUse",
        "Training job names must be unique within an AWS account and region, "
        "and a training job with this name already exists (arn:x)",
    ),
    "create_transform_job": (
        "ResourceInUse",
        "Transform job names must be unique within an AWS account and region, "
        "and a transform job with this name already exists (arn:x)",
    ),
}


class _SecondCreateRefused:
    """moto, except that the second of each create answers as SageMaker does."""

    def __init__(self):
        self.moto = boto3.client("sagemaker")
        self.stub_client = boto3.client("sagemaker")
        self.stub = Stubber(self.stub_client)
        self.stub.activate()
        self.seen: set[str] = set()
        self.stubbed: set[str] = set()

    def answer(self, operation: str, response: dict | None = None, error: tuple[str, str] | None = None) -> None:
        """What moto cannot answer, as SageMaker answers it (the Stubber checks the shape)."""
        self.stubbed.add(operation)
        if error:
            self.stub.add_client_error(operation, *error)
        else:
            self.stub.add_response(operation, response or {})

    def __getattr__(self, name):
        if name in self.stubbed:
            return getattr(self.stub_client, name)
        if name in ALREADY_EXISTS:
            if name in self.seen:
                self.stub.add_client_error(name, *ALREADY_EXISTS[name])
                return getattr(self.stub_client, name)
            self.seen.add(name)
        return getattr(self.moto, name)


@pytest.fixture(params=FAMILIES)
def sagemaker(request):
    if request.param == "aws":
        request.getfixturevalue("aws")
        return SageMakerAdapter(_SecondCreateRefused())
    return request.getfixturevalue("local")["sagemaker"]


def test_what_does_not_exist(sagemaker):
    with pytest.raises(NotFoundError):
        sagemaker.describe_training_job("no-such-job")
    with pytest.raises(NotFoundError):
        sagemaker.describe_tuning_job("no-such-tuning")
    assert sagemaker.describe_endpoint("no-such-endpoint") is None
    sagemaker.delete_endpoint("no-such-endpoint")  # no error


def test_a_second_create_is_already_exists(sagemaker):
    model = endpoint_requests.model_request(CONFIG, RUN, f"s3://{BUCKET}/runs/{RUN}/final/model.tar.gz", DATASET.uri)
    assert sagemaker.create_model(model) is True and sagemaker.create_model(model) is False
    endpoint_config = endpoint_requests.endpoint_config_request(CONFIG, RUN, DATASET.uri)
    assert (
        sagemaker.create_endpoint_config(endpoint_config) is True
        and sagemaker.create_endpoint_config(endpoint_config) is False
    )
    endpoint = endpoint_requests.create_endpoint_request(CONFIG, "pets", RUN, DATASET.uri)
    assert sagemaker.create_endpoint(endpoint) is True and sagemaker.create_endpoint(endpoint) is False
    assert sagemaker.describe_endpoint(CONFIG.endpoint("pets"))["EndpointConfigName"] == RUN
    final = requests.final_training_request(
        CONFIG, RUN, DATASET.uri, requests.static_hyperparameters(CONFIG), {"lr": "0.01"}
    )
    assert sagemaker.create_training_job(final) is True and sagemaker.create_training_job(final) is False
    tuning = requests.tuning_job_request(CONFIG, RUN, DATASET)
    assert sagemaker.create_tuning_job(tuning) is True and sagemaker.create_tuning_job(tuning) is False


def test_describe_after_create_and_tags(sagemaker):
    final = requests.final_training_request(
        CONFIG, RUN, DATASET.uri, requests.static_hyperparameters(CONFIG), {"lr": "0.01"}
    )
    sagemaker.create_training_job(final)
    described = sagemaker.describe_training_job(f"{RUN}-final")
    assert described["TrainingJobName"] == f"{RUN}-final"
    assert described["TrainingJobArn"].endswith(f":training-job/{RUN}-final")
    assert described["HyperParameters"] == final["HyperParameters"]
    assert described["TrainingJobStatus"] in ("InProgress", "Completed", "Failed", "Stopped")
    arn = described["TrainingJobArn"]
    assert sagemaker.list_tags(arn) == {t["Key"]: t["Value"] for t in final["Tags"]}
    sagemaker.add_tags(arn, [{"Key": "extra", "Value": "1"}])
    assert sagemaker.list_tags(arn)["extra"] == "1"
    sagemaker.delete_tags(arn, ["extra"])
    assert "extra" not in sagemaker.list_tags(arn)
    tuning = requests.tuning_job_request(CONFIG, RUN, DATASET)
    sagemaker.create_tuning_job(tuning)
    described = sagemaker.describe_tuning_job(RUN)
    assert described["HyperParameterTuningJobName"] == RUN
    assert described["HyperParameterTuningJobConfig"]["Strategy"] == CONFIG.tuning_strategy
    assert (
        described["TrainingJobDefinition"]["StaticHyperParameters"]
        == tuning["TrainingJobDefinition"]["StaticHyperParameters"]
    )


def test_a_transform_job_is_created_once_and_described(sagemaker):
    job = names.batch_job_name(CONFIG.endpoint("pets"), "0123abcd")
    request = batch_requests.transform_job_request(CONFIG, job, RUN, "pets", DATASET.uri)
    assert sagemaker.create_transform_job(request) is True and sagemaker.create_transform_job(request) is False
    described = sagemaker.describe_transform_job(job)
    assert described["TransformJobName"] == job and described["TransformJobArn"].endswith(f":transform-job/{job}")
    assert described["ModelName"] == RUN and described["TransformOutput"] == request["TransformOutput"]
    assert described["TransformJobStatus"] in ("InProgress", "Completed", "Failed", "Stopped")
    assert sagemaker.list_tags(described["TransformJobArn"])["droptrain:role"] == "batch"
    with pytest.raises(NotFoundError):
        sagemaker.describe_transform_job("no-such-transform-job")


def _answer(sagemaker, operation: str, response: dict | None = None, error: tuple[str, str] | None = None) -> None:
    """For the AWS family only: the answer SageMaker gives where moto has none."""
    client = getattr(sagemaker, "_client", None)
    if isinstance(client, _SecondCreateRefused):
        client.answer(operation, response, error)


def test_stopping_and_listing_a_tuning_jobs_trials(sagemaker):
    _answer(
        sagemaker,
        "stop_hyper_parameter_tuning_job",
        error=("ResourceNotFound", "Amazon SageMaker can't find a tuning job with name no-such-tuning"),
    )
    with pytest.raises(NotFoundError):
        sagemaker.stop_tuning_job("no-such-tuning")
    _answer(
        sagemaker,
        "list_training_jobs_for_hyper_parameter_tuning_job",
        error=("ResourceNotFound", "Amazon SageMaker can't find a tuning job with name no-such-tuning"),
    )
    with pytest.raises(NotFoundError):
        sagemaker.list_trials("no-such-tuning")

    sagemaker.create_tuning_job(requests.tuning_job_request(CONFIG, RUN, DATASET))
    _answer(sagemaker, "list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": []})
    trials = sagemaker.list_trials(RUN)
    assert all({"TrainingJobName", "TrainingJobStatus", "TunedHyperParameters"} <= set(t) for t in trials)
    _answer(sagemaker, "stop_hyper_parameter_tuning_job", {})
    assert sagemaker.stop_tuning_job(RUN) is True
    # Once it has ended, stopping it again is no error and says so.
    _answer(
        sagemaker,
        "stop_hyper_parameter_tuning_job",
        error=("ValidationException", "The request was rejected because the tuning job is in status Stopped."),
    )
    if isinstance(getattr(sagemaker, "_client", None), _SecondCreateRefused):
        described = sagemaker.describe_tuning_job(RUN)
        described["HyperParameterTuningJobStatus"] = "Stopped"
        described.pop("ResponseMetadata", None)
        _answer(
            sagemaker,
            "describe_hyper_parameter_tuning_job",
            {
                k: v
                for k, v in described.items()
                if k not in ("TuningJobCompletionDetails", "ConsumedResources", "Autotune")
            },
        )
    else:  # the local search ends the job on its own thread, once its trials have stopped
        deadline = time.monotonic() + DEADLINE
        while (
            sagemaker.describe_tuning_job(RUN)["HyperParameterTuningJobStatus"] != "Stopped"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert sagemaker.describe_tuning_job(RUN)["HyperParameterTuningJobStatus"] == "Stopped"
    assert sagemaker.stop_tuning_job(RUN) is False


# -- SNS and SageMaker Runtime ------------------------------------------------------------------------


@pytest.fixture(params=FAMILIES)
def publisher(request):
    if request.param == "aws":
        request.getfixturevalue("aws")
        return SnsAdapter(boto3.client("sns"))
    from droptrain.local.aws.notify import LocalPublisher

    return LocalPublisher(request.getfixturevalue("local")["tmp"] / "notes.jsonl", say=lambda m: None, topic_arn=TOPIC)


def test_publishing(publisher):
    message_id = publisher.publish(
        TOPIC, "droptrain test: hello", '{"event": "dataset.accepted"}', {"event": "dataset.accepted"}
    )
    assert isinstance(message_id, str) and message_id
    with pytest.raises(NotFoundError):
        publisher.publish(TOPIC.replace("droptrain-dev", "no-such-topic"), "s", "{}", {"event": "x"})


@pytest.fixture(params=FAMILIES)
def runtime(request):
    if request.param == "aws":
        client = boto3.client(
            "sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
        )
        stub = Stubber(client)
        # What SageMaker Runtime answers for an endpoint that does not exist.
        stub.add_client_error("invoke_endpoint", "ValidationError", "Endpoint nope of account 123456789012 not found.")
        stub.activate()
        return RuntimeAdapter(client)
    from droptrain.local.sagemaker.endpoint import LocalRuntimeClient

    return LocalRuntimeClient(request.getfixturevalue("local")["endpoints"])


def test_invoking_what_does_not_exist(runtime):
    with pytest.raises(EndpointNotFoundError):
        runtime.invoke("nope", b"\xff\xd8\xff", "image/jpeg", "application/json")
    assert issubclass(EndpointNotFoundError, AdapterError)


# -- the model registry -------------------------------------------------------------------------------

# What SageMaker answers where moto falls short: a repeated ClientToken is the same version, and a
# second group by a name is refused (moto creates both).
GROUP_EXISTS = (
    "ValidationException",
    "Model Package Group already exists: arn:aws:sagemaker:us-east-1:123456789012:model-package-group/x",
)


def test_model_registry(sagemaker):
    group = registry_requests.model_package_group_request(CONFIG, "pets", "pets")
    assert sagemaker.create_model_package_group(group) is True
    _answer(sagemaker, "create_model_package_group", error=GROUP_EXISTS)
    assert sagemaker.create_model_package_group(group) is False
    assert [g["ModelPackageGroupName"] for g in sagemaker.list_model_package_groups("droptrain-dev-")] == [
        "droptrain-dev-pets"
    ]
    assert sagemaker.list_model_package_groups("droptrain-prod-") == []
    assert sagemaker.list_model_packages("droptrain-dev-cats") == [], "no such group: no versions"

    first = registry_requests.model_package_request(
        CONFIG,
        "pets",
        RUN,
        f"s3://{BUCKET}/runs/{RUN}/final/model.tar.gz",
        DATASET.uri,
        {"test:accuracy": 0.9},
        {"lr": "0.01"},
    )
    arn = sagemaker.create_model_package(first)
    assert arn.endswith(":model-package/droptrain-dev-pets/1")
    second = registry_requests.model_package_request(
        CONFIG,
        "pets",
        "pets-99999999",
        f"s3://{BUCKET}/runs/pets-99999999/final/model.tar.gz",
        DATASET.uri,
        {"test:accuracy": 0.8},
        {"lr": "0.02"},
    )
    assert sagemaker.create_model_package(second).endswith(":model-package/droptrain-dev-pets/2")
    listed = sagemaker.list_model_packages("droptrain-dev-pets")
    assert [(p["ModelPackageVersion"], p["ModelApprovalStatus"]) for p in listed] == [
        (1, "PendingManualApproval"),
        (2, "PendingManualApproval"),
    ]
    described = sagemaker.describe_model_package(arn)
    assert described["ModelPackageArn"] == arn and described["ModelPackageVersion"] == 1
    assert described["InferenceSpecification"]["Containers"] == first["InferenceSpecification"]["Containers"]
    sagemaker.update_model_package(registry_requests.approval_request(arn, "Approved", "droptrain gate: first version"))
    described = sagemaker.describe_model_package(arn)
    assert (
        described["ModelApprovalStatus"] == "Approved"
        and described["ApprovalDescription"] == "droptrain gate: first version"
    )
    with pytest.raises(NotFoundError):
        _answer(
            sagemaker, "describe_model_package", error=("ValidationException", "ModelPackage arn:x does not exist.")
        )
        sagemaker.describe_model_package(arn.replace("/1", "/7"))


def test_a_version_for_a_group_that_does_not_exist_is_refused(sagemaker):
    request = registry_requests.model_package_request(
        CONFIG, "cats", RUN, f"s3://{BUCKET}/runs/{RUN}/final/model.tar.gz", None, {}, {}
    )
    _answer(
        sagemaker,
        "create_model_package",
        error=("ValidationException", "Model Package Group droptrain-dev-cats does not exist."),
    )
    with pytest.raises(AdapterError):
        sagemaker.create_model_package(request)


@pytest.fixture(params=FAMILIES)
def alarms(request):
    if request.param == "aws":
        request.getfixturevalue("aws")
        from chalice_app.adapters.cloudwatch import CloudWatchAdapter

        return CloudWatchAdapter(boto3.client("cloudwatch")), lambda name: boto3.client("cloudwatch").describe_alarms(
            AlarmNames=[name]
        )["MetricAlarms"][0]
    from droptrain.local.aws.alarms import LocalAlarms

    local = request.getfixturevalue("local")
    local_alarms = LocalAlarms(local["store"], local["endpoints"].invocations)
    return local_alarms, local_alarms.get


def test_alarms_are_put_and_replaced(alarms):
    port, read = alarms
    for alarm in alarm_requests.alarm_requests(CONFIG, "pets"):
        port.put_alarm(alarm)
        port.put_alarm(alarm)  # idempotent
        stored = read(alarm["AlarmName"])
        assert stored["AlarmName"] == alarm["AlarmName"] and stored["Threshold"] == alarm["Threshold"]
    changed = {**alarm_requests.alarm_requests(CONFIG, "pets")[1], "Threshold": 1.0}
    port.put_alarm(changed)
    assert read(changed["AlarmName"])["Threshold"] == 1.0


def test_an_endpoint_nobody_invoked_has_no_invocations(alarms):
    from datetime import datetime, timedelta, timezone

    port, _ = alarms
    now = datetime.now(timezone.utc)
    assert port.invocations("droptrain-dev-pets", now - timedelta(hours=24), now) == 0
