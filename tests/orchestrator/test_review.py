"""The review queue and retrain on the moto-backed stage: doubtful answers listed, labelled once (their
images copied where a retrain reads them, never into datasets/), and a retrain's training job: warm-started,
incremental, with the reviewed images, valid against botocore."""

from __future__ import annotations

import json

from chalice_app import retrain_requests
from orchestrator.conftest import BUCKET
from orchestrator.support import validate
from orchestrator.test_capture import JPEG, _answer
from orchestrator.test_projects import CLASSES, _first_version
from orchestrator.test_requests import make_config

JSON = {"Content-Type": "application/json"}


def _doubtful(stage, client, run: str, probabilities: list[float]) -> None:
    for probability in probabilities:
        _answer(stage, "dogs", run, probability)
        assert client.http.post("/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=JPEG).status_code == 200


def _decide(client, item: str, body) -> tuple[int, dict]:
    response = client.http.post(f"/projects/dogs/review/{item}", headers=JSON, body=json.dumps(body))
    return response.status_code, response.json_body


def _keys(stage, prefix: str) -> list[str]:
    return [o["Key"] for o in stage.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_doubtful_answers_are_listed_newest_first_and_labelled_once(stage, client):
    run = _first_version(stage, client, "dogs")
    _doubtful(stage, client, run, [0.41, 0.3, 0.2, 0.95])  # the confident one is not for review
    queue = client.http.get("/projects/dogs/review").json_body
    assert queue["classes"] == sorted(CLASSES) and queue["project"] == "dogs"
    items = queue["items"]
    assert [i["predictions"][0]["probability"] for i in items] == [0.2, 0.3, 0.41], "newest first"
    assert all(i["model"] == run and i["captured_at"].endswith("Z") for i in items)
    assert items[0]["image_url"] == f"projects/dogs/review/{items[0]['id']}/image", "the API's route, from its base"
    image = client.http.get("/" + items[0]["image_url"], headers={"Accept": "image/jpeg"})
    assert image.status_code == 200 and image.body == JPEG and image.headers["Content-Type"] == "image/jpeg"
    gone = client.http.get("/projects/dogs/review/00000000-0000-0000-0000-000000000000/image")
    assert (gone.status_code, gone.json_body["error"]["code"]) == (404, "unknown_item")
    known = sorted(CLASSES)[0]
    first, second, third = (i["id"] for i in items)
    assert _decide(client, first, {"label": known})[1]["split"] == "train"
    assert _decide(client, second, {"label": known})[1]["split"] == "test", "a class's second image is held out"
    status, body = _decide(client, first, {"label": known})
    assert (status, body["error"]["code"]) == (409, "already_reviewed")
    labelled = _keys(stage, "runs/review/dogs/labelled/")
    assert labelled == sorted(
        [f"runs/review/dogs/labelled/train/{known}/{first}.jpg", f"runs/review/dogs/labelled/test/{known}/{second}.jpg"]
    )
    assert stage.s3.get_object(Bucket=BUCKET, Key=labelled[0])["Body"].read() == JPEG
    assert not [k for k in _keys(stage, "datasets/dogs/") if first in k], "the user's dataset is never written"
    status, body = _decide(client, third, {"discard": True})
    assert status == 200 and body["discard"] is True and "split" not in body
    assert client.http.get("/projects/dogs/review").json_body["items"] == []


def test_a_bad_decision_is_refused_and_changes_nothing(stage, client):
    run = _first_version(stage, client, "dogs")
    _doubtful(stage, client, run, [0.3])
    (item,) = client.http.get("/projects/dogs/review").json_body["items"]
    for body, code in (
        ({"label": "zebra"}, "unknown_class"),
        ({"label": sorted(CLASSES)[0], "new_class": True}, "class_exists"),
        ({"label": "../up", "new_class": True}, "invalid_class"),
        ({"label": "pug", "discard": True}, "bad_request"),
        ({"labels": "pug"}, "bad_request"),
        ({"discard": False}, "bad_request"),
        ("pug", "bad_request"),
    ):
        status, answer = _decide(client, item["id"], body)
        assert (status, answer["error"]["code"]) == (400, code), body
    status, answer = _decide(client, "00000000-0000-0000-0000-000000000000", {"discard": True})
    assert (status, answer["error"]["code"]) == (404, "unknown_item")
    plain = client.http.post(f"/projects/dogs/review/{item['id']}", headers={"Content-Type": "text/plain"}, body="{}")
    assert plain.status_code == 415
    assert _keys(stage, "runs/review/dogs/labelled/") == [] and _keys(stage, "runs/review/dogs/decided/") == []
    status, answer = _decide(client, item["id"], {"label": "zebra", "new_class": True})
    assert status == 200 and answer["split"] == "train", "a new class's first image trains"
    stage.s3.put_object(Bucket=BUCKET, Key="runs/review/dogs/labelled/README.txt", Body=b"left by a person")
    assert "zebra" in client.http.get("/projects/dogs/review").json_body["classes"], "what is not ours is ignored"
    missing = client.http.get("/projects/cats/review")
    assert (missing.status_code, missing.json_body["error"]["code"]) == (404, "unknown_project")


def test_retrain_starts_a_warm_started_incremental_run_with_the_reviewed_images(stage, client):
    run = _first_version(stage, client, "dogs")
    _doubtful(stage, client, run, [0.3, 0.2])
    first, second = client.http.get("/projects/dogs/review").json_body["items"]
    assert _decide(client, first["id"], {"label": "zebra", "new_class": True})[0] == 200
    assert _decide(client, second["id"], {"label": "zebra"})[0] == 200, "a class labelled new is known from then on"
    stage.notifications()
    response = client.http.post("/projects/dogs/retrain", headers=JSON, body="{}")
    assert response.status_code == 202, response.json_body
    answer = response.json_body
    assert answer["warm_start_from"] == run and answer["new_classes"] == ["zebra"]
    assert answer["reviewed_images"] == {"zebra": {"test": 1, "train": 1}}
    assert answer["run_id"].startswith("dogs-") and answer["run_id"] != run
    serving_job = stage.sagemaker.describe_training_job(TrainingJobName=f"{run}-final")
    job = stage.sagemaker.describe_training_job(TrainingJobName=answer["job"])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    (serving,) = client.http.get("/projects/dogs").json_body["versions"]
    assert channels["training"] == f"s3://{BUCKET}/datasets/dogs/"
    assert channels["reviewed"] == f"s3://{BUCKET}/runs/review/dogs/labelled/"
    assert channels["warmstart"] == channels["baseline"] == serving["model_data"], "the serving version's weights"
    old, new = serving_job["HyperParameters"], job["HyperParameters"]
    assert int(new["epochs"]) == max(1, -(-int(old["epochs"].strip('"')) // 3))
    assert float(new["lr"]) == float(old["lr"].strip('"')) / 10 and new["weights"] == "none"
    (started,) = stage.notifications()
    assert started["event"] == "training.started" and started["detail"]["warm_start_from"] == run
    assert started["detail"]["input_mode"] == "File" and started["detail"]["managed_debugger"] is False
    for body in ('{"epochs": 3}', "not json", "[]"):
        refused = client.http.post("/projects/dogs/retrain", headers=JSON, body=body)
        assert (refused.status_code, refused.json_body["error"]["code"]) == (400, "bad_request"), body
    assert (
        client.http.post("/projects/dogs/retrain", headers={"Content-Type": "text/plain"}, body="").status_code == 415
    )


def test_the_retrain_request_is_valid_and_leaves_out_an_empty_review():
    serving = {
        "HyperParameters": {"epochs": '"7"', "lr": "0.003", "weights": "imagenet", "reports-uri": "s3://old/"},
        "InputDataConfig": [],
    }
    config = make_config()
    request = retrain_requests.retrain_request(
        config, "dogs-0badc0de", f"s3://{BUCKET}/datasets/dogs/", serving, f"s3://{BUCKET}/runs/x/model.tar.gz", None
    )
    validate("sagemaker", "CreateTrainingJob", request)
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["training", "baseline", "warmstart"]
    hps = request["HyperParameters"]
    assert (hps["epochs"], hps["lr"], hps["weights"]) == ("3", "0.0003", "none")
    assert hps["reports-uri"] == f"s3://{BUCKET}/runs/dogs-0badc0de/reports/", "this run's, not the serving one's"
