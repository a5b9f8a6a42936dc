"""POST /predict/{project} and POST /predict through the Chalice route, with InvokeEndpoint stubbed
(moto cannot carry binary bodies)."""

from __future__ import annotations

import io
import json

import pytest
from botocore.response import StreamingBody
from PIL import Image

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200)
ANSWER = {
    "predictions": [
        {"label": "beagle", "probability": 0.93},
        {"label": "pug", "probability": 0.05},
        {"label": "corgi", "probability": 0.02},
    ],
    "abstained": False,
    "model": "dogs-3f9a1c2e",
}
EXPLANATION = {"method": "grad-cam", "layer": "layer4", "size": [8, 8], "peak": [3, 4], "heatmap_png": "iVBORw0KGgo="}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _answer(
    stage,
    body: bytes,
    content_type: str,
    answer: dict = ANSWER,
    endpoint: str = "droptrain-dev-dogs",
    attributes: str | None = None,
):
    """The endpoint answers its most probable labels (up to 20); the route trims them to top_k."""
    data = json.dumps(answer).encode()
    expected = {"EndpointName": endpoint, "Body": body, "ContentType": content_type, "Accept": "application/json"}
    if attributes is not None:
        expected["CustomAttributes"] = attributes
    stage.runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json"},
        expected,
    )


def _post(client, body: bytes, content_type: str | None = "image/jpeg", query: str = "", path: str = "/predict/dogs"):
    headers = {"Content-Type": content_type} if content_type else {}
    return client.http.post(f"{path}{query}", headers=headers, body=body)


def _projects(stage, *projects: str) -> None:
    for project in projects:
        stage.sagemaker.create_model_package_group(ModelPackageGroupName=f"droptrain-dev-{project}")


def test_predict_without_a_project_uses_the_only_one(stage, client):
    _projects(stage, "cats")
    _answer(stage, JPEG, "image/jpeg", endpoint="droptrain-dev-cats")
    assert _post(client, JPEG, path="/predict").status_code == 200
    stage.runtime_stub.assert_no_pending_responses()


def test_predict_without_a_project_among_several_names_them(stage, client):
    _projects(stage, "cats", "dogs", "flowers")
    response = _post(client, JPEG, path="/predict")
    assert response.status_code == 400 and response.json_body["error"]["code"] == "project_required"
    assert "cats, dogs, flowers" in response.json_body["error"]["message"]


def test_predict_without_a_project_and_no_model_yet(stage, client):
    response = _post(client, JPEG, path="/predict")
    assert response.status_code == 503 and response.json_body["error"]["code"] == "no_model"


def test_default_project_answers_predict_without_a_project(stage, tmp_path, monkeypatch):
    from orchestrator.conftest import make_client

    _projects(stage, "cats", "dogs")
    stage.services.config = __import__("dataclasses").replace(stage.services.config, default_project="dogs")
    _answer(stage, JPEG, "image/jpeg", endpoint="droptrain-dev-dogs")
    with make_client(tmp_path, stage.services) as client:
        assert _post(client, JPEG, path="/predict").status_code == 200


def test_bad_input_is_refused_before_any_aws_call(stage, client):
    """Even the project lookup waits until the image is known good: bad input costs nothing."""
    stage.route("list_model_package_groups")  # an unanswered Stubber call would fail the request
    response = _post(client, b"not an image", path="/predict")
    assert response.status_code == 400 and response.json_body["error"]["code"] == "invalid_image"


@pytest.mark.parametrize("body,content_type", [(JPEG, "image/jpeg"), (_png(), "image/png")])
def test_images_pass_through(stage, client, body, content_type):
    _answer(stage, body, content_type)
    response = _post(client, body, content_type)
    assert response.status_code == 200
    assert response.json_body == ANSWER
    stage.runtime_stub.assert_no_pending_responses()


def test_top_k_trims_the_endpoints_answer(stage, client):
    _answer(stage, JPEG, "image/jpeg")
    response = _post(client, JPEG, query="?top_k=2")
    assert response.status_code == 200 and response.json_body["predictions"] == ANSWER["predictions"][:2]


def test_the_real_image_type_is_sent(stage, client):
    """A PNG labelled image/jpeg is sent as what it is."""
    png = _png()
    _answer(stage, png, "image/png")
    assert _post(client, png, "image/jpeg").status_code == 200


@pytest.mark.parametrize(
    "body,content_type,query,status,code",
    [
        (b"", "image/jpeg", "", 400, "empty_body"),
        (b"hello", "text/plain", "", 415, "unsupported_media_type"),
        (b'{"a": 1}', "application/json", "", 415, "unsupported_media_type"),
        (JPEG, None, "", 415, "unsupported_media_type"),
        (b"GIF89a not allowed", "image/jpeg", "", 400, "invalid_image"),
        (JPEG, "image/jpeg", "?top_k=0", 400, "invalid_top_k"),
        (JPEG, "image/jpeg", "?top_k=21", 400, "invalid_top_k"),
        (JPEG, "image/jpeg", "?top_k=five", 400, "invalid_top_k"),
        (JPEG, "image/jpeg", "?min_confidence=1.01", 400, "invalid_min_confidence"),
        (JPEG, "image/jpeg", "?min_confidence=-0", 200, None),
        (JPEG, "image/jpeg", "?min_confidence=NaN", 400, "invalid_min_confidence"),
        (JPEG, "image/jpeg", "?min_confidence=sure", 400, "invalid_min_confidence"),
        (JPEG, "image/jpeg", "?explain=1", 400, "invalid_explain"),
        (b"\xff\xd8\xff" + bytes(4 * 1024 * 1024), "image/jpeg", "", 413, "payload_too_large"),
    ],
)
def test_bad_requests_never_reach_the_endpoint(stage, client, body, content_type, query, status, code):
    if status == 200:  # the edge of the range is a good request (0 and -0 alike)
        _answer(stage, body, content_type, attributes="min_confidence=0.0")
        assert _post(client, body, content_type, query).status_code == 200
        return
    response = _post(client, body, content_type, query)
    assert response.status_code == status
    assert response.json_body["error"]["code"] == code
    assert response.json_body["error"]["message"]
    assert set(response.json_body) == {"error"}
    stage.runtime_stub.assert_no_pending_responses()


def test_no_endpoint_is_503(stage, client):
    stage.runtime_stub.add_client_error(
        "invoke_endpoint", "ValidationError", "Endpoint droptrain-dev of account 123456789012 not found."
    )
    response = _post(client, JPEG)
    assert response.status_code == 503 and response.json_body["error"]["code"] == "no_model"


def test_endpoint_failure_is_502_without_internals(stage, client):
    stage.runtime_stub.add_client_error(
        "invoke_endpoint",
        "ModelError",
        "Received server error (500) from primary",
        http_status_code=424,
        response_meta={},
        modeled_fields={"OriginalStatusCode": 500, "OriginalMessage": "Traceback (most recent call last): ..."},
    )
    response = _post(client, JPEG)
    assert response.status_code == 502 and response.json_body["error"]["code"] == "endpoint_error"
    assert "Traceback" not in json.dumps(response.json_body)


def _model_rejects(stage, status: int, message: str) -> None:
    stage.runtime_stub.add_client_error(
        "invoke_endpoint",
        "ModelError",
        f"Received client error ({status})",
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": status, "OriginalMessage": message},
    )


def test_model_rejecting_the_image_is_400(stage, client):
    _model_rejects(stage, 400, "not a decodable JPEG or PNG image")
    response = _post(client, JPEG)
    assert response.status_code == 400 and response.json_body["error"]["code"] == "invalid_image"


@pytest.mark.parametrize("code", ["invalid_image", "image_too_large", "invalid_min_confidence", "invalid_explain"])
def test_the_serving_applications_own_error_reaches_the_client(stage, client, code):
    """The Ray Serve application answers {"error": {"code", "message"}}; SageMaker passes it on as a ModelError."""
    _model_rejects(stage, 400, json.dumps({"error": {"code": code, "message": "what the model said"}}))
    response = _post(client, JPEG)
    assert response.status_code == 400
    assert response.json_body == {"error": {"code": code, "message": "what the model said"}}


def test_options_travel_to_the_model_as_custom_attributes_and_its_answer_comes_back(stage, client):
    """explain and min_confidence are the serving application's to apply: they reach it as InvokeEndpoint's
    CustomAttributes (validated by the Stubber against botocore's model), and its answer passes through."""
    answer = {**ANSWER, "abstained": True, "explanation": EXPLANATION}
    _answer(stage, JPEG, "image/jpeg", answer, attributes="explain=true&min_confidence=0.8")
    response = _post(client, JPEG, query="?explain=true&min_confidence=0.8&top_k=1")
    assert response.status_code == 200
    assert response.json_body == {**answer, "predictions": ANSWER["predictions"][:1]}
    _answer(stage, JPEG, "image/jpeg", attributes="min_confidence=0.0")
    assert _post(client, JPEG, query="?min_confidence=0").json_body["abstained"] is False
    stage.runtime_stub.assert_no_pending_responses()


def test_a_model_from_before_explanations_says_so(stage, client):
    old = {"predictions": ANSWER["predictions"], "model": "dogs-0ld0ld00"}  # no abstained, no explanation
    _answer(stage, JPEG, "image/jpeg", old, attributes="explain=true")
    response = _post(client, JPEG, query="?explain=true")
    assert response.status_code == 400 and response.json_body["error"]["code"] == "explanation_unavailable"
    assert "dogs-0ld0ld00" in response.json_body["error"]["message"]
    _answer(stage, JPEG, "image/jpeg", old)
    assert _post(client, JPEG).json_body["abstained"] is False, "a model that cannot abstain does not by itself"
    _answer(stage, JPEG, "image/jpeg", old, attributes="min_confidence=0.95")
    response = _post(client, JPEG, query="?min_confidence=0.95")
    assert response.json_body["abstained"] is True, "below the floor the request asked for (0.93 < 0.95)"


def test_throttling_is_retried_with_backoff_then_503(stage, client):
    for _ in range(4):
        stage.runtime_stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded")
    response = _post(client, JPEG)
    assert response.status_code == 503 and response.json_body["error"]["code"] == "endpoint_busy"
    assert stage.sleeps == [0.2, 0.5, 1.2]


def test_throttling_then_success(stage, client):
    stage.runtime_stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded")
    _answer(stage, JPEG, "image/jpeg")
    assert _post(client, JPEG).status_code == 200
    assert stage.sleeps == [0.2]


def test_endpoint_answering_garbage_is_502(stage, client):
    stage.runtime_stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(b"<html>"), 6)})
    assert _post(client, JPEG).status_code == 502


def test_status_without_an_endpoint(stage, client):
    assert client.http.get("/status").json_body == {"projects": {}}
    _projects(stage, "dogs")
    response = client.http.get("/status")
    assert response.status_code == 200
    assert response.json_body == {
        "projects": {"dogs": {"endpoint": {"name": "droptrain-dev-dogs", "status": "NotDeployed"}, "model": None}}
    }


def test_the_predict_path_fits_inside_api_gateways_29_seconds(monkeypatch):
    """One InvokeEndpoint attempt per call (botocore's own retries off), and retries only while one
    more attempt still fits the budget: the worst case ends before API Gateway gives up."""
    from chalice_app import bootstrap, predict

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    runtime = bootstrap._clients("us-east-1")["runtime"]
    config = runtime.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert (config.connect_timeout, config.read_timeout) == (
        predict.INVOKE_CONNECT_TIMEOUT,
        predict.INVOKE_READ_TIMEOUT,
    )
    assert predict.worst_case_seconds() < predict.API_GATEWAY_TIMEOUT_SECONDS - 1


def test_no_retry_starts_that_could_not_finish_in_time():
    from chalice_app import config as config_module
    from chalice_app import predict
    from chalice_app.adapters.errors import ThrottledError
    from orchestrator.test_requests import BASE_ENV

    now = [0.0]
    calls = []

    class SlowThenThrottled:
        def invoke(self, *args):
            calls.append(now[0])
            now[0] += 10  # the endpoint took 10 s to say it is busy
            raise ThrottledError("Rate exceeded", "ThrottlingException")

    sleeps = []
    with pytest.raises(predict.UnavailableError):
        predict.predict(
            SlowThenThrottled(),
            config_module.load(BASE_ENV),
            "droptrain-dev-dogs",
            JPEG,
            "image/jpeg",
            None,
            sleep=lambda s: (sleeps.append(s), now.__setitem__(0, now[0] + s)),
            clock=lambda: now[0],
        )
    assert len(calls) == 1 and sleeps == [], "10 s spent + another 22 s attempt would pass the 26 s budget"
