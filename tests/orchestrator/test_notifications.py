"""Notifications within SNS's limits, sent once per run and kind, with the S3 marker's edge cases."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from chalice_app.adapters.errors import AdapterError, ThrottledError
from chalice_app.adapters.s3 import S3Adapter
from chalice_app.adapters.sns import SnsAdapter
from chalice_app.notifications import MESSAGE_MAX_BYTES, Notification, Notifier, subject

TOPIC = "arn:aws:sns:us-east-1:123456789012:droptrain-dev"
BUCKET = "droptrain-data-dev"


@pytest.mark.parametrize(
    "summary",
    [
        "a\x07bell, a\ttab,\r\na newline and \x1b[31mcolour\x1b[0m",
        "Müller's 🐕 dataset" * 20,
        "x" * 500,
    ],
)
def test_subjects_are_one_printable_ascii_line_under_100_characters(summary):
    text = subject(Notification("dataset.accepted", "r-1", None, "Accepted", summary))
    assert len(text) < 100
    assert all(32 <= ord(c) < 127 for c in text), repr(text)
    assert text.startswith("droptrain dataset.accepted: ")


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sns = boto3.client("sns", region_name="us-east-1")
        sns.create_topic(Name="droptrain-dev")
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=TOPIC, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        yield s3, sns, sqs, queue


def test_a_message_too_large_for_sns_is_shortened_and_kept_whole_in_s3(aws):
    s3, sns, sqs, queue = aws
    classes = [f"class-{i:05d}-with-a-rather-long-descriptive-name" for i in range(20_000)]
    note = Notification(
        "dataset.accepted",
        "dogs-1a2b3c4d",
        "s3://b/datasets/dogs/",
        "Accepted",
        "accepted",
        detail={"classes": classes, "num_classes": len(classes), "layout": "splits"},
    )
    assert Notifier(SnsAdapter(sns), S3Adapter(s3), TOPIC, BUCKET).send(note)
    (received,) = sqs.receive_message(QueueUrl=queue)["Messages"]
    assert len(received["Body"].encode()) <= MESSAGE_MAX_BYTES
    message = json.loads(received["Body"])
    assert message["detail"]["num_classes"] == 20_000 and message["detail"]["layout"] == "splits", "small fields kept"
    assert 0 < len(message["detail"]["classes"]) < 20_000 and message["detail"]["classes"][0] == classes[0]
    assert message["truncated"]["fields"] == ["classes"]
    full = message["truncated"]["full_message"]
    assert full == f"s3://{BUCKET}/runs/dogs-1a2b3c4d/notifications/dataset.accepted.json"
    kept = json.loads(s3.get_object(Bucket=BUCKET, Key=full.split("/", 3)[3])["Body"].read())
    assert kept["detail"]["classes"] == classes, "nothing lost: the marker holds the whole message"


def test_publishing_failing_takes_the_marker_back_so_the_retry_sends(aws):
    s3, sns, sqs, queue = aws
    note = Notification("tuning.started", "dogs-1a2b3c4d", None, "InProgress", "tuning")
    broken = Notifier(SnsAdapter(sns), S3Adapter(s3), "arn:aws:sns:us-east-1:123456789012:no-such-topic", BUCKET)
    with pytest.raises(AdapterError):
        broken.send(note)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0, "marker removed"
    notifier = Notifier(SnsAdapter(sns), S3Adapter(s3), TOPIC, BUCKET)
    assert notifier.send(note) is True and notifier.send(note) is False
    assert len(sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]) == 1


def _conflict(stub: Stubber) -> None:
    stub.add_client_error(
        "put_object",
        "ConditionalRequestConflict",
        "A conflicting operation is in progress",
        http_status_code=409,
        expected_params={
            "Bucket": BUCKET,
            "Key": "k",
            "Body": b"{}",
            "IfNoneMatch": "*",
            "ContentType": "application/json",
        },
    )


def test_a_conditional_write_conflict_is_retried():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(client)
    _conflict(stub)
    _conflict(stub)
    stub.add_response(
        "put_object",
        {"ETag": '"abc"'},
        {"Bucket": BUCKET, "Key": "k", "Body": ANY, "IfNoneMatch": "*", "ContentType": "application/json"},
    )
    sleeps: list[float] = []
    with stub:
        assert S3Adapter(client, sleep=sleeps.append).put_if_absent(BUCKET, "k", b"{}") is True
    assert sleeps == [0.1, 0.3]


def test_a_conflict_that_does_not_settle_asks_for_a_retry_of_the_event():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(client)
    for _ in range(4):
        _conflict(stub)
    with stub, pytest.raises(ThrottledError) as info:
        S3Adapter(client, sleep=lambda s: None).put_if_absent(BUCKET, "k", b"{}")
    assert info.value.retryable
