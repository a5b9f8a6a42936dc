"""What the endpoint sees, kept: SageMaker's DataCaptureConfig (valid against botocore), its record format
read exactly, and the doubtful answers the predict handler keeps for review on the moto-backed stage."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone

import pytest
from botocore.response import StreamingBody

from chalice_app import capture, endpoint_requests
from orchestrator.conftest import BUCKET
from orchestrator.support import validate
from orchestrator.test_projects import _first_version
from orchestrator.test_requests import make_config

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100)
# SageMaker's own example of a capture line (its developer guide, "Capture data from real-time endpoint").
SAGEMAKER_EXAMPLE = (
    '{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT",'
    '"data":"69,0,153.7,109\\n","encoding":"CSV"},"endpointOutput":{"observedContentType":'
    '"text/csv; charset=utf-8","mode":"OUTPUT","data":"0.0254181120544672","encoding":"CSV"}},'
    '"eventMetadata":{"eventId":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee","inferenceTime":"2022-02-14T17:25:49Z"},'
    '"eventVersion":"0"}'
)


def test_the_endpoint_config_captures_the_share_asked_for_in_sagemakers_format():
    request = endpoint_requests.endpoint_config_request(make_config(CAPTURE_PERCENT=25), "dogs-3f9a1c2e", None)
    validate("sagemaker", "CreateEndpointConfig", request)
    assert request["DataCaptureConfig"] == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 25,
        "DestinationS3Uri": f"s3://{BUCKET}/runs/capture/dogs",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    assert make_config().capture_percent == 10, "the default"
    for off in (make_config(CAPTURE_PERCENT=0), make_config(INFERENCE_INSTANCE_TYPE="serverless")):
        assert "DataCaptureConfig" not in endpoint_requests.endpoint_config_request(off, "dogs-3f9a1c2e", None)
    with pytest.raises(Exception, match="CAPTURE_PERCENT"):
        make_config(CAPTURE_PERCENT=101)


def test_a_record_reads_back_as_written_and_sagemakers_own_example_reads_too():
    when = datetime(2026, 12, 6, 15, 4, 5, tzinfo=timezone.utc)
    answer = {"predictions": [{"label": "pug", "probability": 0.4}], "abstained": True}
    line = capture.json_line(capture.record(JPEG, "image/jpeg", json.dumps(answer).encode(), when, "e-1"))
    assert json.loads(line)["captureData"]["endpointInput"]["data"] == base64.b64encode(JPEG).decode()
    read = capture.parse(line)
    assert (read.event_id, read.time, read.content_type, read.body, read.answer) == (
        "e-1",
        "2026-12-06T15:04:05Z",
        "image/jpeg",
        JPEG,
        answer,
    )
    assert capture.key("runs/capture/dogs", "droptrain-dev-dogs", "AllTraffic", when, "e-1") == (
        "runs/capture/dogs/droptrain-dev-dogs/AllTraffic/2026/12/06/15/2026-12-06T15-04-05-e-1.jsonl"
    )
    example = capture.parse(SAGEMAKER_EXAMPLE)
    assert example.body == b"69,0,153.7,109\n" and example.answer == pytest.approx(0.0254181120544672)
    assert example.event_id == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    for broken in (
        "not json",
        '{"eventVersion": "0"}',
        '{"captureData": {"endpointInput": {"data": "@@", "encoding": "BASE64"}}}',
    ):
        with pytest.raises(capture.CaptureFormatError):
            capture.parse(broken)


@pytest.mark.parametrize(
    "answer, doubtful",
    [
        ({"predictions": [{"label": "a", "probability": 0.9}], "abstained": False}, False),
        ({"predictions": [{"label": "a", "probability": 0.9}], "abstained": True}, True),
        ({"predictions": [{"label": "a", "probability": 0.59}], "abstained": False}, True),
        ({"predictions": [], "abstained": False}, True),
    ],
)
def test_doubtful_is_abstained_or_under_review_below(answer, doubtful):
    assert capture.doubtful(answer, 0.6) is doubtful


def _answer(stage, project: str, run: str, probability: float, abstained: bool = False) -> None:
    body = json.dumps(
        {"predictions": [{"label": "pug", "probability": probability}], "abstained": abstained, "model": run}
    ).encode()
    stage.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(body), len(body))},
        {
            "EndpointName": f"droptrain-dev-{project}",
            "Body": JPEG,
            "ContentType": "image/jpeg",
            "Accept": "application/json",
        },
    )


def _review_keys(stage) -> list[str]:
    listed = stage.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/capture/dogs/droptrain-dev-dogs/review/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_doubtful_answer_is_kept_for_review_with_its_image_whatever_the_sample_rate(stage, client):
    run = _first_version(stage, client, "dogs")
    _answer(stage, "dogs", run, 0.95)
    assert client.http.post("/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=JPEG).status_code == 200
    assert _review_keys(stage) == [], "a confident answer is SageMaker's to sample"
    _answer(stage, "dogs", run, 0.41)
    response = client.http.post("/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=JPEG)
    assert response.status_code == 200
    (key,) = _review_keys(stage)
    kept = capture.parse(stage.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert kept.body == JPEG and kept.content_type == "image/jpeg"
    assert kept.answer["predictions"] == response.json_body["predictions"] and kept.answer["model"] == run


def test_capture_off_keeps_nothing_and_a_store_that_fails_costs_the_client_nothing(stage, client, monkeypatch):
    import dataclasses

    run = _first_version(stage, client, "dogs")
    services = stage.services
    monkeypatch.setattr(services, "config", dataclasses.replace(services.config, capture_percent=0))
    _answer(stage, "dogs", run, 0.2, abstained=True)
    assert client.http.post("/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=JPEG).status_code == 200
    assert _review_keys(stage) == []
    monkeypatch.setattr(services, "config", dataclasses.replace(services.config, capture_percent=10))

    def refuse(*args, **kwargs):
        from chalice_app.adapters.errors import ServiceError

        raise ServiceError("AccessDenied", "AccessDenied")

    monkeypatch.setattr(services.s3, "put_if_absent", refuse)
    _answer(stage, "dogs", run, 0.2, abstained=True)
    response = client.http.post("/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=JPEG)
    assert response.status_code == 200 and response.json_body["abstained"] is True
