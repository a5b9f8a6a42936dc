"""A moto-backed stage: bucket, topic with an SQS subscriber, SageMaker, and the app's services."""

from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from chalice_app import bootstrap
from chalice_app.adapters.runtime import RuntimeAdapter
from chalice_app.adapters.sagemaker import SageMakerAdapter
from orchestrator.support import Routed, event
from orchestrator.test_requests import BASE_ENV

BUCKET = BASE_ENV["DATA_BUCKET"]
# Operations moto lacks or cannot shape realistically; a Stubber answers them, validating our
# canned responses against the service model.
STUBBED_SAGEMAKER = (
    "describe_hyper_parameter_tuning_job",
    "update_endpoint",
    "list_training_jobs_for_hyper_parameter_tuning_job",
    "stop_hyper_parameter_tuning_job",
)


@dataclass
class Stage:
    s3: Any
    sagemaker: Any  # the moto client
    stub: Stubber  # for STUBBED_SAGEMAKER and any operation a test routes to it
    runtime_stub: Stubber
    queue_url: str
    sqs: Any
    sleeps: list
    services: Any
    stub_client: Any
    cloudwatch: Any = None

    def route(self, *operations: str) -> None:
        """Send these SageMaker operations to the Stubber too (for states moto cannot produce)."""
        overrides = {op: self.stub_client for op in (*STUBBED_SAGEMAKER, *operations)}
        self.services.sagemaker = SageMakerAdapter(Routed(self.sagemaker, overrides, self.stub))

    def notifications(self) -> list[dict]:
        """Every message the topic's subscriber has received so far, oldest first."""
        out = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return out
            for m in batch:
                body = json.loads(m["Body"])
                out.append(
                    {
                        "subject": body["Subject"],
                        "attributes": {k: v["Value"] for k, v in body.get("MessageAttributes", {}).items()},
                        **json.loads(body["Message"]),
                    }
                )
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def put(self, key: str, body: bytes = b"\xff\xd8\xff\xe0 fake jpeg") -> str:
        return self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')

    def upload_folder(
        self,
        name: str,
        classes=("beagle", "corgi", "pug"),
        splits=("train", "valid", "test"),
        per=3,
        marker: bytes = b"",
    ) -> dict:
        for split in splits:
            for cls in classes:
                for i in range(per):
                    self.put(f"datasets/{name}/{split}/{cls}/{i}.jpg")
        etag = self.put(f"datasets/{name}/_READY", marker)
        return event("s3-object-created.json", object={"key": f"datasets/{name}/_READY", "size": 0, "etag": etag})

    def upload_zip(self, name: str, members: dict[str, bytes]) -> dict:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for member, data in members.items():
                zf.writestr(member, data)
        body = buffer.getvalue()
        etag = self.put(f"datasets/{name}.zip", body)
        return event("s3-object-created.json", object={"key": f"datasets/{name}.zip", "size": len(body), "etag": etag})


# Clients for the whole worker: a new boto3 session and its clients cost a quarter of a second, and every
# test's stage built two sessions and thirteen clients. moto answers a client whenever a mock is active,
# whichever mock it was built under, and each test's mock starts from empty backends.
@functools.cache
def _client(service: str, role: str = "") -> Any:
    return _session().client(service)


@functools.cache
def _session() -> Any:
    return boto3.session.Session(region_name="us-east-1")


# The app's own clients (bootstrap's), built once per region, as a Lambda container keeps them.
_app_clients = functools.cache(bootstrap._clients)


@pytest.fixture
def stage(monkeypatch):
    env = {
        **BASE_ENV,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "droptrain-test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(bootstrap, "_clients", _app_clients)
    with mock_aws():
        s3 = _client("s3")
        s3.create_bucket(Bucket=BUCKET)
        sns = _client("sns")
        topic = sns.create_topic(Name="droptrain-dev")["TopicArn"]
        assert topic == BASE_ENV["NOTIFY_TOPIC_ARN"]
        sqs = _client("sqs")
        queue = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)

        services = bootstrap.build(os.environ)
        sleeps: list[float] = []
        services.sleep = sleeps.append
        moto_sagemaker = _client("sagemaker")
        stub_client = _client("sagemaker", "stubbed")
        stub = Stubber(stub_client)
        runtime_client = _client("sagemaker-runtime", "stubbed")
        runtime_stub = Stubber(runtime_client)
        services.runtime = RuntimeAdapter(runtime_client)
        stage = Stage(
            s3,
            moto_sagemaker,
            stub,
            runtime_stub,
            queue,
            sqs,
            sleeps,
            services,
            stub_client,
            _client("cloudwatch"),
        )
        stage.route()
        with stub, runtime_stub:
            yield stage


def make_client(project: Path, services: Any = None):
    """A client of the app built over ``services`` (None: the AWS adapters from the environment, as on
    Lambda). chalice.test.Client applies a stage's environment from config.json on every call: give it
    the test stage's (whatever of BASE_ENV the process has now)."""
    from chalice.test import Client

    from chalice_app.application import create_app

    (project / ".chalice").mkdir(parents=True, exist_ok=True)
    (project / ".chalice" / "config.json").write_text(
        json.dumps(
            {
                "version": "2.0",
                "app_name": "droptrain",
                "stages": {"test": {"environment_variables": {k: os.environ[k] for k in BASE_ENV if k in os.environ}}},
            }
        )
    )
    return Client(create_app(os.environ, services), project_dir=str(project), stage_name="test")


@pytest.fixture
def client(stage, tmp_path):
    with make_client(tmp_path / "project", stage.services) as c:
        yield c


def invoke(client, function: str, payload: dict) -> Any:
    return client.lambda_.invoke(function, payload).payload
