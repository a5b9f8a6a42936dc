"""Projects and model versions end to end on the moto-backed stage: one endpoint per dataset, the
Model Registry, the promotion gate, approval through the API, and rollback."""

from __future__ import annotations

import dataclasses

from orchestrator.conftest import BUCKET, invoke
from orchestrator.test_pipeline import (
    _complete_tuning,
    _endpoint_description,
    _endpoint_event,
    _register_and_deploy,
    _run_to_tuning,
    _training_event,
    package_event,
    put_evaluations,
)

CLASSES = {"beagle": 0.9, "corgi": 0.9, "pug": 0.9}


JSON = {"Content-Type": "application/json"}  # as the CLI and the console send it


def _expect_update(stage, endpoint: str, run: str) -> None:
    """UpdateEndpoint (which moto lacks) as the stage's default config sends it: all at once on one
    instance, baking under the project's alarms."""
    stage.stub.add_response(
        "update_endpoint",
        {"EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{endpoint}"},
        {
            "EndpointName": endpoint,
            "EndpointConfigName": run,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600},
                    "TerminationWaitInSeconds": 120,
                    "MaximumExecutionTimeoutInSeconds": 3000,
                },
                "AutoRollbackConfiguration": {
                    "Alarms": [{"AlarmName": f"{endpoint}-5xx-rate"}, {"AlarmName": f"{endpoint}-model-latency"}]
                },
            },
        },
    )


def _first_version(stage, client, name: str) -> str:
    _, run = _run_to_tuning(stage, client, name)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/{name}/")
    put_evaluations(stage, run, CLASSES)
    assert _register_and_deploy(stage, client, run) == "deployment: creating the endpoint"
    invoke(client, "on_endpoint_state_change", _endpoint_event(run))
    return run


def test_two_datasets_are_served_by_their_own_endpoints(stage, client):
    dogs = _first_version(stage, client, "dogs")
    flowers = _first_version(stage, client, "flowers")
    endpoints = {e["EndpointName"]: e for e in stage.sagemaker.list_endpoints()["Endpoints"]}
    assert set(endpoints) == {"droptrain-dev-dogs", "droptrain-dev-flowers"}
    assert stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-dogs")["EndpointConfigName"] == dogs
    assert stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-flowers")["EndpointConfigName"] == flowers
    groups = stage.sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert sorted(g["ModelPackageGroupName"] for g in groups) == ["droptrain-dev-dogs", "droptrain-dev-flowers"]

    listing = client.http.get("/projects").json_body["projects"]
    assert [(p["project"], p["serving"]) for p in listing] == [("dogs", dogs), ("flowers", flowers)]
    # Each project's predictions go to its own endpoint; /predict alone must say which.
    import io

    from botocore.response import StreamingBody

    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100)
    for project, run in (("dogs", dogs), ("flowers", flowers)):
        answer = f'{{"predictions": [{{"label": "x", "probability": 1.0}}], "model": "{run}"}}'.encode()
        stage.runtime_stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(answer), len(answer))},
            {
                "EndpointName": f"droptrain-dev-{project}",
                "Body": jpeg,
                "ContentType": "image/jpeg",
                "Accept": "application/json",
            },
        )
        response = client.http.post(f"/predict/{project}", headers={"Content-Type": "image/jpeg"}, body=jpeg)
        assert response.status_code == 200 and response.json_body["model"] == run
    ambiguous = client.http.post("/predict", headers={"Content-Type": "image/jpeg"}, body=jpeg)
    assert ambiguous.status_code == 400 and "dogs, flowers" in ambiguous.json_body["error"]["message"]
    unknown = client.http.get("/projects/cats")
    assert unknown.status_code == 404 and unknown.json_body["error"]["code"] == "unknown_project"
    assert "dogs, flowers" in unknown.json_body["error"]["message"]


def test_a_worse_retrain_is_held_then_approved_through_the_api_and_rolled_back(stage, client):
    first = _first_version(stage, client, "dogs")
    stage.notifications()
    _, second = _run_to_tuning(stage, client, "dogs", marker=b"worse data")
    _complete_tuning(stage, client, second, f"s3://{BUCKET}/datasets/dogs/")
    # The retrain lost the corgis: its final job evaluated both models on its own test split.
    put_evaluations(stage, second, {"beagle": 0.95, "corgi": 0.6, "pug": 0.95}, baseline_run=first, baseline=CLASSES)
    assert invoke(client, "on_training_job_state_change", _training_event(second)).startswith(
        "registered as version 2; held: "
    )
    held = [n for n in stage.notifications() if n["event"] == "model.held"]
    assert len(held) == 1 and held[0]["run_id"] == second
    detail = held[0]["detail"]
    assert detail["serving"] == first and detail["version"] == 2
    assert any("recall of 'corgi'" in r for r in detail["reasons"])
    assert detail["gate"]["comparison"]["recall"]["corgi"] == {"serving": 0.9, "new": 0.6, "change": -0.3}
    assert detail["gate"]["comparison"]["recall"]["beagle"]["change"] == 0.05
    assert "same" in detail["gate"]["basis"] or "split" in detail["gate"]["basis"]
    assert package_event(stage, second)["detail"]["ModelApprovalStatus"] == "PendingManualApproval"
    assert stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-dogs")["EndpointConfigName"] == first, (
        "not deployed"
    )

    versions = client.http.get("/projects/dogs").json_body
    assert versions["serving"] == first
    assert [(v["version"], v["run_id"], v["status"], v["serving"]) for v in versions["versions"]] == [
        (1, first, "Approved", True),
        (2, second, "PendingManualApproval", False),
    ]
    assert versions["versions"][0]["metrics"]["macro_f1"] == 0.9

    # A person approves it through the API; SageMaker's approval event deploys it.
    approved = client.http.post(f"/projects/dogs/versions/{second}/deploy", headers=JSON)
    assert approved.status_code == 202 and approved.json_body["action"] == "approved; its approval deploys it"
    _expect_update(stage, "droptrain-dev-dogs", second)
    assert invoke(client, "on_model_package_state_change", package_event(stage, second)).startswith(
        "deployment: updating the endpoint"
    )
    stage.stub.assert_no_pending_responses()
    assert [n["event"] for n in stage.notifications()] == ["model.approved", "deployment.started"]

    # Rollback: the newest approved version before the serving one, deployed at once (it is approved already).
    stage.route("describe_endpoint")
    # moto cannot run an update: the endpoint now serves the second version, as SageMaker's would.
    serving_second = _endpoint_description(second, "InService", endpoint="droptrain-dev-dogs")
    stage.stub.add_response("describe_endpoint", serving_second)  # the listing: who serves
    stage.stub.add_response("describe_endpoint", serving_second)  # deploy: the endpoint's state
    _expect_update(stage, "droptrain-dev-dogs", first)
    rolled = client.http.post("/projects/dogs/versions/previous/deploy", headers=JSON)
    assert rolled.status_code == 202, rolled.json_body
    assert rolled.json_body["run_id"] == first and rolled.json_body["previous"] == second
    assert rolled.json_body["action"].startswith("updating the endpoint")
    stage.stub.assert_no_pending_responses()
    started = [n for n in stage.notifications() if n["event"] == "deployment.started"]
    assert len(started) == 1 and started[0]["run_id"] == first, "a redeployment of a run is announced again"


def test_nothing_to_roll_back_to_and_unknown_versions(stage, client):
    first = _first_version(stage, client, "dogs")
    response = client.http.post("/projects/dogs/versions/previous/deploy", headers=JSON)
    assert response.status_code == 409 and response.json_body["error"]["code"] == "no_earlier_version"
    response = client.http.post("/projects/dogs/versions/dogs-00000000/deploy", headers=JSON)
    assert response.status_code == 404 and response.json_body["error"]["code"] == "unknown_version"
    response = client.http.post(f"/projects/dogs/versions/{first}/deploy", headers=JSON)
    assert response.status_code == 202 and response.json_body["action"] == "already serving"


def test_manual_approval_holds_every_version(stage, client):
    stage.services.config = dataclasses.replace(stage.services.config, approval_mode="manual")
    _, run = _run_to_tuning(stage, client, "dogs")
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/dogs/")
    assert invoke(client, "on_training_job_state_change", _training_event(run)).startswith(
        "registered as version 1; held: APPROVAL_MODE=manual"
    )
    assert stage.sagemaker.list_endpoints()["Endpoints"] == []
    held = [n for n in stage.notifications() if n["event"] == "model.held"][0]
    assert held["detail"]["approve"].startswith(f"POST /projects/dogs/versions/{run}/deploy")


def test_other_stages_groups_and_pending_versions_are_ignored(stage, client):
    other = package_event_for("droptrain-prod-dogs", "Approved")
    assert invoke(client, "on_model_package_state_change", other).startswith(
        "ignored: model package group droptrain-prod-dogs"
    )
    pending = package_event_for("droptrain-dev-dogs", "PendingManualApproval")
    assert invoke(client, "on_model_package_state_change", pending).startswith("ignored: version 3")
    assert stage.sagemaker.list_endpoints()["Endpoints"] == []


def package_event_for(group: str, approval: str) -> dict:
    from orchestrator.support import event

    return event("model-package-approved.json", ModelPackageGroupName=group, ModelApprovalStatus=approval)


def test_the_consoles_run_routes_read_what_the_pipeline_wrote(stage, client):
    """GET /runs and GET /runs/{run_id} on AWS: the notification markers, the reports and SageMaker's
    records; the report link is a short-lived presigned URL."""
    import json
    from urllib.parse import parse_qs, urlparse

    from orchestrator.test_pipeline import _list_trials, _trial, _tuning_description

    run = _first_version(stage, client, "dogs")
    runs = client.http.get("/runs").json_body["runs"]
    assert [(r["run_id"], r["project"], r["state"]) for r in runs] == [(run, "dogs", "deployed")]
    assert runs[0]["events"][0] == "dataset.accepted" and runs[0]["events"][-1] == "deployment.completed"

    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job", _tuning_description(stage, run), {"HyperParameterTuningJobName": run}
    )
    best = {
        **_trial(run, 3, "Completed"),
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy", "Value": 0.91},
    }
    best["TrainingJobName"] = f"{run}-003-7d1e2a4b"
    _list_trials(stage, run, _trial(run, 1, "Completed"), best)
    stage.put(f"runs/{run}/reports/rules.json", json.dumps([{"rule": "Overfit", "status": "NoIssuesFound"}]).encode())
    stage.put(f"runs/{run}/reports/report.html", b"<html>report</html>")
    detail = client.http.get(f"/runs/{run}").json_body
    assert [m["event"] for m in detail["timeline"]][:2] == ["dataset.accepted", "tuning.started"]
    assert detail["state"] == "deployed" and detail["evaluation"]["classes"] == ["beagle", "corgi", "pug"]
    assert [t["best"] for t in detail["tuning"]["trials"]] == [False, True] and detail["tuning"]["trials"][1][
        "objective"
    ] == 0.91
    assert detail["rules"] == [{"rule": "Overfit", "status": "NoIssuesFound"}]
    assert detail["report"] == f"runs/{run}/report"
    report = client.http.get(f"/runs/{run}/report")
    assert report.status_code == 302
    location = urlparse(report.headers["Location"])
    assert location.path == f"/runs/{run}/reports/report.html" or location.path.endswith(
        f"/{BUCKET}/runs/{run}/reports/report.html"
    )
    assert int(parse_qs(location.query).get("X-Amz-Expires", parse_qs(location.query).get("Expires", ["0"]))[0]) > 0

    assert client.http.get("/runs/dogs-00000000").status_code == 404
    assert client.http.get("/runs/NOT_A_RUN").json_body["error"]["code"] == "unknown_run"
    page = client.http.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_a_deploy_another_site_could_send_changes_nothing(stage, client):
    """What any web page can send without CORS (no-cors fetch, a form): no JSON Content-Type, its own
    Origin. Refused before anything is read or changed, on Lambda as locally."""
    _first_version(stage, client, "dogs")
    stage.notifications()  # taken: what the first version announced
    path = "/projects/dogs/versions/previous/deploy"
    for headers, status, code in (
        ({}, 415, "unsupported_media_type"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({**JSON, "Origin": "http://evil.example", "Host": "api.example"}, 403, "foreign_origin"),
        ({**JSON, "Origin": "null", "Host": "api.example"}, 403, "foreign_origin"),
    ):
        response = client.http.post(path, headers=headers)
        assert (response.status_code, response.json_body["error"]["code"]) == (status, code), headers
    assert stage.notifications() == [], "nothing was started or announced"
    same_site = client.http.post(path, headers={**JSON, "Origin": "https://api.example", "Host": "api.example"})
    assert same_site.json_body["error"]["code"] == "no_earlier_version", "a page of the API's own site gets through"


def test_a_versions_exports_are_handed_out_by_presigned_url(stage, client):
    """GET /projects/{project}/versions/{run_id}/export/{format} on AWS: a short-lived presigned URL of the
    file the final job uploaded beside its reports; a format its parity check left out says why."""
    import json
    from urllib.parse import urlparse

    run = _first_version(stage, client, "dogs")
    stage.put(f"runs/{run}/reports/model.onnx", b"onnx bytes")
    reason = "probabilities differ by up to 3.00e-03 from PyTorch's (at most 0.0001), top-1 agreement 98.00%"
    report = {"formats": {"onnx": {"kept": True}, "torchscript": {"kept": False, "reason": reason}}}
    stage.put(f"runs/{run}/reports/export.json", json.dumps(report).encode())
    answer = client.http.get(f"/projects/dogs/versions/{run}/export/onnx")
    assert answer.status_code == 302 and urlparse(answer.headers["Location"]).path.endswith(
        f"runs/{run}/reports/model.onnx"
    )
    missing = client.http.get(f"/projects/dogs/versions/{run}/export/torchscript")
    assert missing.status_code == 404 and missing.json_body["error"]["code"] == "export_unavailable"
    assert reason in missing.json_body["error"]["message"]
    for path, status, code in (
        (f"/projects/dogs/versions/{run}/export/tflite", 400, "unknown_format"),
        ("/projects/dogs/versions/dogs-00000000/export/onnx", 404, "unknown_version"),
        ("/projects/dogs/versions/NOT_A_RUN/export/onnx", 404, "unknown_version"),
        (f"/projects/cats/versions/{run}/export/onnx", 404, "unknown_version"),
    ):
        answer = client.http.get(path)
        assert (answer.status_code, answer.json_body["error"]["code"]) == (status, code), path
