"""Drift checks on the moto-backed stage: the Processing job asked for (valid against botocore) when there is
something new to check, its verdict kept in the project's history, and drift announced."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from chalice_app import capture, drift_requests, names
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import validate
from orchestrator.test_cost import _tick
from orchestrator.test_projects import JSON, _first_version
from orchestrator.test_requests import make_config

SAMPLED = "runs/capture/dogs/droptrain-dev-dogs/AllTraffic/"


def _job_event(job: str, status: str = "Completed") -> dict:
    return {
        "version": "0",
        "id": f"event-{job}-{status}",
        "detail-type": "SageMaker Processing Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-12-06T16:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"ProcessingJobName": job, "ProcessingJobStatus": status},
    }


def _put_capture(stage, when: datetime) -> None:
    line = capture.json_line(capture.record(b"\xff\xd8\xff", "image/jpeg", b"{}", when, f"e{when:%H%M}"))
    key = capture.key("runs/capture/dogs", "droptrain-dev-dogs", "AllTraffic", when, f"e{when:%H%M}")
    stage.put(key, line.encode())


def _manifest(stage, job: str) -> list:
    key = f"runs/drift/dogs/{job}/captures.manifest"
    return json.loads(stage.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _verdict(stage, job: str, status: str, until: str) -> None:
    verdict = {
        "status": status,
        "sample_size": 120,
        "test": "mmd-permutation",
        "statistic": 0.08,
        "p_value": 0.005 if status == "drift" else 0.4,
        "alpha": 0.01,
        "since": drift_requests.EPOCH,
        "until": until,
        "model": "x",
        "labels": {"distance": 0.3, "most_shifted": [{"label": "pug", "reference_share": 0.25, "share": 0.6}]},
        "examples": [{"file": "2026/12/06/15/a.jsonl", "event_id": "e1", "time": until}],
    }
    stage.put(f"runs/drift/dogs/{job}/drift.json", json.dumps(verdict).encode())


def test_the_drift_job_is_a_valid_processing_job_over_the_sampled_captures():
    config = make_config()
    job = names.drift_job_name(config.endpoint("dogs"), "0a1b2c3d")
    request = drift_requests.drift_job_request(
        config, job, "dogs", "dogs-3f9a1c2e", f"s3://{BUCKET}/runs/dogs-3f9a1c2e/final/output/model.tar.gz", ""
    )
    validate("sagemaker", "CreateProcessingJob", request)
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    assert inputs["captures"] == f"s3://{BUCKET}/runs/drift/dogs/{job}/captures.manifest"
    (captures,) = [i["S3Input"] for i in request["ProcessingInputs"] if i["InputName"] == "captures"]
    assert captures["S3DataType"] == "ManifestFile"
    assert json.loads(drift_requests.captures_manifest(config, "dogs", ["2026/12/06/15/a.jsonl"])) == [
        {"prefix": f"s3://{BUCKET}/{SAMPLED}"},  # SageMaker's random sample, not the doubtful ones
        "2026/12/06/15/a.jsonl",
    ]
    assert (
        inputs["model"].endswith("model.tar.gz")
        and "drift_check.py" in request["AppSpecification"]["ContainerEntrypoint"][2]
    )
    arguments = request["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--since") + 1] == drift_requests.EPOCH


def test_a_check_runs_on_what_is_new_keeps_its_verdict_and_announces_drift(stage, client):
    run = _first_version(stage, client, "dogs")
    stage.notifications()
    nothing = client.http.post("/projects/dogs/drift-check", body="{}", headers=JSON)
    assert nothing.status_code == 202 and nothing.json_body["job"] is None, nothing.json_body

    _put_capture(stage, datetime(2026, 12, 6, 14, 10, tzinfo=timezone.utc))
    _put_capture(stage, datetime(2026, 12, 6, 15, 41, tzinfo=timezone.utc))
    started = client.http.post("/projects/dogs/drift-check", body="{}", headers=JSON).json_body
    job = started["job"]
    assert job.startswith("droptrain-dev-dogs-drift-") and started["since"] == drift_requests.EPOCH
    assert _manifest(stage, job)[1:] == [
        "2026/12/06/14/2026-12-06T14-10-00-e1410.jsonl",
        "2026/12/06/15/2026-12-06T15-41-00-e1541.jsonl",
    ]
    described = stage.sagemaker.describe_processing_job(ProcessingJobName=job)
    model = {i["InputName"]: i["S3Input"]["S3Uri"] for i in described["ProcessingInputs"]}["model"]
    assert f"/runs/{run}/" in model, "the serving version's artifact"

    _verdict(stage, job, "drift", "2026-12-06T15:41:00Z")
    assert invoke(client, "on_drift_check_state_change", _job_event(job)) == f"drift check {job}: drift"
    (announced,) = stage.notifications()
    assert announced["event"] == "drift.detected" and announced["job"] == job
    detail = announced["detail"]
    assert detail["p_value"] == 0.005 and detail["most_shifted_labels"][0]["label"] == "pug"
    assert detail["examples"][0]["capture"] == f"s3://{BUCKET}/{SAMPLED}2026/12/06/15/a.jsonl"
    invoke(client, "on_drift_check_state_change", _job_event(job))
    assert stage.notifications() == [], "one event, one notification"

    checks = client.http.get("/projects/dogs/drift").json_body["checks"]
    assert [c["job"] for c in checks] == [job] and checks[0]["status"] == "drift"
    # The next check starts where this one stopped; nothing newer was captured, so none starts.
    again = client.http.post("/projects/dogs/drift-check", body="{}", headers=JSON).json_body
    assert again["since"] == "2026-12-06T15:41:00Z" and again["job"] is None
    # The next check downloads only what was captured since (not the older hours, not what this one read).
    _put_capture(stage, datetime(2026, 12, 6, 16, 2, tzinfo=timezone.utc))
    later = client.http.post("/projects/dogs/drift-check", body="{}", headers=JSON).json_body
    assert later["since"] == "2026-12-06T15:41:00Z" and later["captures"] == 1
    assert _manifest(stage, later["job"])[1:] == ["2026/12/06/16/2026-12-06T16-02-00-e1602.jsonl"]


def test_the_hourly_round_checks_serving_projects_and_no_drift_is_history_only(stage, client):
    _first_version(stage, client, "dogs")
    _put_capture(stage, datetime(2026, 12, 6, 15, 5, tzinfo=timezone.utc))
    stage.notifications()
    tick = _tick(datetime(2026, 12, 6, 16, 0, tzinfo=timezone.utc))
    assert invoke(client, "check_drift", tick) == "drift checks started: dogs"
    (job,) = [
        j["ProcessingJobName"]
        for j in stage.sagemaker.list_processing_jobs()["ProcessingJobSummaries"]
        if "-drift-" in j["ProcessingJobName"]
    ]
    _verdict(stage, job, "no_drift", "2026-12-06T15:05:00Z")
    assert invoke(client, "on_drift_check_state_change", _job_event(job)).endswith(": no_drift")
    assert stage.notifications() == []
    assert [c["status"] for c in client.http.get("/projects/dogs/drift").json_body["checks"]] == ["no_drift"]
    failed = invoke(client, "on_drift_check_state_change", _job_event("droptrain-dev-dogs-drift-ffffffff", "Failed"))
    assert "Failed" in failed and len(client.http.get("/projects/dogs/drift").json_body["checks"]) == 1
    assert client.http.get("/projects/cats/drift").status_code == 404
