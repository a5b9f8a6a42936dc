"""Batch predictions on the moto-backed stage: the request checked, the Batch Transform job asked for (its
request valid against botocore), and its per-image outputs assembled into one JSON Lines file."""

from __future__ import annotations

import json

import pytest

from chalice_app import batch_requests, cost, names
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import validate
from orchestrator.test_projects import JSON, _first_version
from orchestrator.test_requests import make_config
from trainlib.errors import BATCH_ACCEPT

JPEG = b"\xff\xd8\xff\xe0 fake jpeg"


def _post(client, project: str, body: dict, headers: dict | None = None):
    return client.http.post(f"/projects/{project}/batch", body=json.dumps(body), headers=headers or JSON)


def _transform_event(job: str, status: str = "Completed", reason: str | None = None) -> dict:
    detail = {"TransformJobName": job, "TransformJobStatus": status, "ModelName": "m"}
    if reason:
        detail["FailureReason"] = reason
    return {
        "version": "0",
        "id": f"event-{job}-{status}",
        "detail-type": "SageMaker Transform Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-12-06T12:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{job}"],
        "detail": detail,
    }


def test_the_transform_request_is_valid_and_sends_each_image_whole_as_a_line():
    config = make_config(BATCH_INSTANCE_TYPE="ml.c5.xlarge")
    job = names.batch_job_name(config.endpoint("dogs"), "0123abcd")
    request = batch_requests.transform_job_request(config, job, "dogs-1a2b3c4d", "dogs", "s3://b/datasets/dogs/")
    validate("sagemaker", "CreateTransformJob", request)
    assert request["TransformInput"]["SplitType"] == "None" and request["BatchStrategy"] == "SingleRecord"
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    assert source == {"S3DataType": "ManifestFile", "S3Uri": f"s3://{BUCKET}/runs/batch/{job}/manifest.json"}
    assert request["TransformOutput"]["Accept"] == BATCH_ACCEPT, "the serving application's batch line"
    assert request["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1}
    assert request["ModelName"] == "dogs-1a2b3c4d" and job.startswith("droptrain-dev-dogs-batch-")
    manifest = json.loads(batch_requests.manifest(BUCKET, "batch/new/", ["a.jpg", "sub/b.png"]))
    assert manifest == [{"prefix": f"s3://{BUCKET}/batch/new/"}, "a.jpg", "sub/b.png"]


def test_the_forecast_is_one_forward_pass_per_image_at_the_hosting_price():
    price = cost.Price(0.2, "bundled", "2025-06")
    small, large = cost.batch_forecast("ml.m5.xlarge", 100, price), cost.batch_forecast("ml.m5.xlarge", 100_000, price)
    assert large["minutes"] > small["minutes"] >= cost.JOB_OVERHEAD_SECONDS / 60
    (rate, _), _ = cost.throughput("ml.m5.xlarge")
    assert large["usd"] == round((cost.JOB_OVERHEAD_SECONDS + 100_000 / rate) / 3600 * 0.2, 2)
    assert "usd" not in cost.batch_forecast("ml.m5.xlarge", 100, None), "no price: no dollars guessed"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"input_prefix": "s3://another-bucket/batch/x/"}, 400, "bad_request"),
        ({"input_prefix": "batch/../datasets/"}, 400, "bad_request"),
        ({"input_prefix": "runs/dogs-1/"}, 400, "bad_request"),
        ({"input_prefix": "datasets/dogs/test/"}, 400, "bad_request"),
        ({"input_prefix": ""}, 400, "bad_request"),
        ({"input_prefix": "batch/empty/"}, 400, "no_images"),
        ({"input_prefix": "batch/new/", "top_k": 0}, 400, "invalid_top_k"),
        ({"input_prefix": "batch/new/", "top_k": "3"}, 400, "invalid_top_k"),
        ({"input_prefix": "batch/new/", "version": "dogs-00000000"}, 404, "unknown_version"),
        ({"input_prefix": "batch/new/", "colour": "red"}, 400, "bad_request"),
    ],
)
def test_a_bad_request_gets_its_error_and_starts_nothing(stage, client, body, status, code):
    _first_version(stage, client, "dogs")
    stage.put("batch/new/a.jpg", JPEG)
    stage.put("batch/empty/notes.txt", b"not an image")
    stage.notifications()
    answer = _post(client, "dogs", body)
    assert (answer.status_code, answer.json_body["error"]["code"]) == (status, code), answer.json_body
    assert stage.sagemaker.list_transform_jobs()["TransformJobSummaries"] == []
    assert not stage.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/batch/").get("Contents")
    assert stage.notifications() == []


def test_unknown_projects_and_pages_of_other_sites_are_refused(stage, client):
    assert _post(client, "cats", {"input_prefix": "batch/new/"}).status_code == 404
    assert _post(client, "cats", {"input_prefix": "batch/new/"}, {"Content-Type": "text/plain"}).status_code == 415


def test_a_batch_job_predicts_every_image_and_a_bad_one_is_a_line_with_its_error(stage, client):
    run = _first_version(stage, client, "dogs")
    for key in ("batch/new/a.jpg", "batch/new/sub/b.PNG", "batch/new/c.jpeg"):
        stage.put(key, JPEG)
    stage.put("batch/new/readme.txt", b"not an image")
    stage.put("batch/new/huge.jpg", JPEG + bytes(batch_requests.MAX_PAYLOAD_MB * 1024 * 1024))
    stage.notifications()

    answer = _post(client, "dogs", {"input_prefix": f"s3://{BUCKET}/batch/new", "top_k": 2})
    assert answer.status_code == 202, answer.json_body
    job = answer.json_body["job"]
    assert answer.json_body == {
        "job": job,
        "input": f"s3://{BUCKET}/batch/new/",
        "output": f"s3://{BUCKET}/runs/batch/{job}/predictions.jsonl",
        "version": run,
    }
    described = stage.sagemaker.describe_transform_job(TransformJobName=job)
    assert described["ModelName"] == run and described["TransformOutput"]["Accept"] == BATCH_ACCEPT
    manifest = json.loads(stage.s3.get_object(Bucket=BUCKET, Key=f"runs/batch/{job}/manifest.json")["Body"].read())
    assert manifest == [{"prefix": f"s3://{BUCKET}/batch/new/"}, "a.jpg", "c.jpeg", "sub/b.PNG"], (
        "the huge one stays out"
    )
    (started,) = stage.notifications()
    assert started["event"] == "batch.started" and started["job"] == job
    assert started["detail"]["images"] == 4 and started["detail"]["skipped_objects"] == 1
    assert started["detail"]["forecast"]["images"] == 3

    # What the job writes: one answer per image sent (SageMaker's <output>/<relative key>.out).
    line = {"predictions": [{"label": p, "probability": 0.3} for p in ("beagle", "corgi", "pug")], "abstained": False}
    bad = {"predictions": [], "abstained": None, "error": {"code": "invalid_image", "message": "not an image"}}
    for image, body in (("a.jpg", line), ("c.jpeg", bad), ("sub/b.PNG", line)):
        stage.put(f"runs/batch/{job}/out/{image}.out", json.dumps({**body, "error": body.get("error")}).encode())
    assert invoke(client, "on_transform_job_state_change", _transform_event(job)) == f"batch {job}: 4 lines"
    text = stage.s3.get_object(Bucket=BUCKET, Key=f"runs/batch/{job}/predictions.jsonl")["Body"].read().decode()
    lines = [json.loads(row) for row in text.splitlines()]
    assert [row["key"] for row in lines] == [f"batch/new/{k}" for k in ("a.jpg", "c.jpeg", "huge.jpg", "sub/b.PNG")]
    assert all(set(row) == {"key", "predictions", "abstained", "error"} for row in lines)
    assert [p["label"] for p in lines[0]["predictions"]] == ["beagle", "corgi"], "top_k=2"
    assert lines[1]["error"]["code"] == "invalid_image" and lines[2]["error"]["code"] == "payload_too_large"
    assert lines[3]["error"] is None and lines[3]["abstained"] is False
    (completed,) = stage.notifications()
    assert completed["event"] == "batch.completed"
    assert (completed["detail"]["predicted"], completed["detail"]["failed"]) == (2, 2)
    assert completed["detail"]["output"] == answer.json_body["output"]
    # Delivered twice: nothing written again, nothing sent again.
    invoke(client, "on_transform_job_state_change", _transform_event(job))
    assert stage.notifications() == []


def test_outputs_with_the_inputs_prefix_kept_in_front_are_found_too(stage, client):
    _first_version(stage, client, "dogs")
    for key in ("batch/x/a.jpg", "batch/x/deep/a.jpg"):
        stage.put(key, JPEG)
    job = _post(client, "dogs", {"input_prefix": "batch/x/"}).json_body["job"]
    for image, label in (("a.jpg", "beagle"), ("deep/a.jpg", "pug")):
        answer = {"predictions": [{"label": label, "probability": 0.9}], "abstained": False, "error": None}
        stage.put(f"runs/batch/{job}/out/batch/x/{image}.out", json.dumps(answer).encode())
    invoke(client, "on_transform_job_state_change", _transform_event(job))
    text = stage.s3.get_object(Bucket=BUCKET, Key=f"runs/batch/{job}/predictions.jsonl")["Body"].read().decode()
    assert [(row["key"], row["predictions"][0]["label"]) for row in map(json.loads, text.splitlines())] == [
        ("batch/x/a.jpg", "beagle"),
        ("batch/x/deep/a.jpg", "pug"),
    ]


def test_a_failed_job_says_why(stage, client):
    _first_version(stage, client, "dogs")
    stage.put("batch/new/a.jpg", JPEG)
    job = _post(client, "dogs", {"input_prefix": "batch/new/", "version": 1}).json_body["job"]
    stage.notifications()
    event = _transform_event(job, "Failed", "ClientError: See job logs")
    assert invoke(client, "on_transform_job_state_change", event) == f"batch {job} Failed"
    (failed,) = stage.notifications()
    assert failed["event"] == "batch.failed" and failed["detail"]["reason"] == "ClientError: See job logs"
    assert "Contents" not in stage.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/batch/{job}/predictions")
