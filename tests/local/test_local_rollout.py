"""Local endpoints roll an update out as SageMaker's guardrails do: a canary share of the traffic,
then all of it, each baking under the project's alarms; an alarm sends the traffic back.

A fake Ray Serve stands in for the real one here (its applications answer as told), so that what
is tested is the traffic split and the alarms' judgement, quickly; the real engine is tested in
test_local_endpoint.py and end to end."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from chalice_app import alarm_requests, endpoint_requests
from chalice_app.adapters.runtime import ModelError
from droptrain.local.aws.alarms import LocalAlarms, Measurements, breached
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.sagemaker.endpoint import LocalEndpoints
from droptrain.local.store import Store
from helpers import DEADLINE
from orchestrator.test_requests import make_config

ENDPOINT = "droptrain-dev-pets"


class FakeServing:
    """Applications that answer with the status they were given (``status_of[config]``)."""

    def __init__(self):
        self.status_of: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.deployed: set[str] = set()
        self.lock = threading.Lock()

    def deploy(self, name: str, model_dir: Path) -> None:
        self.deployed.add(name)

    def delete(self, name: str) -> None:
        self.deployed.discard(name)

    def call(
        self, name: str, body: bytes, content_type: str = "", accept: str = "", attributes: str = ""
    ) -> tuple[int, dict]:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        status = self.status_of.get(name.removeprefix("ep-"), 200)
        return status, (
            {"predictions": [], "model": name} if status == 200 else {"error": {"code": "boom", "message": "x"}}
        )


@pytest.fixture
def stack(tmp_path):
    store, bucket = Store(tmp_path / "state.db"), LocalBucket(tmp_path / "bucket", "droptrain-data-dev")
    serving = FakeServing()
    alarms = LocalAlarms(store)
    endpoints = LocalEndpoints(store, bucket, tmp_path / "endpoints", lambda e: None, serving, alarms)
    config = make_config(INFERENCE_INSTANCE_COUNT=4, ROLLOUT_BAKE_SECONDS=1)
    for alarm in alarm_requests.alarm_requests(config, "pets"):
        alarms.put_alarm(alarm)

    def version(run: str) -> None:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("config.yaml")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        bucket.put(f"runs/{run}/model.tar.gz", archive.getvalue())
        store.insert(
            "model",
            run,
            {"ModelName": run, "PrimaryContainer": {"ModelDataUrl": bucket.uri(f"runs/{run}/model.tar.gz")}},
        )
        variant = {"ModelName": run, "InitialInstanceCount": config.inference_instance_count}
        store.insert("endpoint-config", run, {"EndpointConfigName": run, "ProductionVariants": [variant]})

    yield {"endpoints": endpoints, "serving": serving, "config": config, "version": version}
    endpoints.close()


def _traffic_until_done(endpoints: LocalEndpoints, stop_after: float = 10) -> dict[str, int]:
    """Requests keep coming while the rollout bakes; returns how many each answer got."""
    answers: dict[str, int] = {}
    deadline = time.time() + stop_after
    while any(t.is_alive() for t in endpoints._threads) and time.time() < deadline:
        try:
            model = __import__("json").loads(endpoints.invoke(ENDPOINT, b"x", "image/jpeg", "application/json"))[
                "model"
            ]
        except ModelError:
            model = "error"
        answers[model] = answers.get(model, 0) + 1
        time.sleep(0.002)
    return answers


def _canary_route(endpoints: LocalEndpoints):
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        with endpoints._routes_lock:
            route = endpoints._routes.get(ENDPOINT)
        if route is not None and route.canary is not None:
            return route
        time.sleep(0.01)
    raise AssertionError("the update never sent a canary share")


def _start(stack, old: str) -> None:
    stack["version"](old)
    stack["endpoints"].create(ENDPOINT, old, {})
    stack["endpoints"].join(DEADLINE)
    assert stack["endpoints"].describe(ENDPOINT)["EndpointStatus"] == "InService"


def test_a_good_version_takes_a_canary_share_then_all_traffic(stack):
    _start(stack, "pets-11111111")
    stack["version"]("pets-22222222")
    update = endpoint_requests.update_endpoint_request(stack["config"], "pets", "pets-22222222")
    stack["endpoints"].update(ENDPOINT, "pets-22222222", update["DeploymentConfig"])
    canary = _canary_route(stack["endpoints"])
    assert (canary.canary, canary.share) == ("ep-pets-22222222", 0.25), "one instance of four: a quarter"
    answers = _traffic_until_done(stack["endpoints"])
    described = stack["endpoints"].describe(ENDPOINT)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "pets-22222222")
    assert not described.get("FailureReason")
    # While the canary baked, the old version kept most of the traffic.
    assert answers.get("ep-pets-11111111", 0) > 0 and answers.get("ep-pets-22222222", 0) > 0
    assert stack["serving"].deployed == {"ep-pets-22222222"}, "the old version goes once the new one took all traffic"


def test_a_version_that_fails_its_requests_is_rolled_back_by_the_alarm(stack):
    _start(stack, "pets-11111111")
    stack["version"]("pets-33333333")
    stack["serving"].status_of["pets-33333333"] = 500
    update = endpoint_requests.update_endpoint_request(stack["config"], "pets", "pets-33333333")
    stack["endpoints"].update(ENDPOINT, "pets-33333333", update["DeploymentConfig"])
    answers = _traffic_until_done(stack["endpoints"])
    described = stack["endpoints"].describe(ENDPOINT)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "pets-11111111")
    assert described["FailureReason"].startswith(
        "Deployment rolled back: alarm droptrain-dev-pets-5xx-rate went into ALARM"
    )
    assert "the canary" in described["FailureReason"], "caught at the canary, before it took all traffic"
    assert answers["ep-pets-11111111"] > answers.get("error", 0) > 0
    assert stack["serving"].deployed == {"ep-pets-11111111"}


def test_the_alarms_judgement():
    rate = alarm_requests.alarm_requests(make_config(), "pets")[0]
    latency = alarm_requests.alarm_requests(make_config(ROLLBACK_LATENCY_MS=100), "pets")[1]
    seen = Measurements("app")
    assert breached(rate, seen) is None, "no traffic is no alarm (TreatMissingData notBreaching)"
    for status in [200] * 95 + [500] * 5:
        seen.record(status, 0.01)
    assert breached(rate, seen) is None, "5% is not more than 5%"
    seen.record(500, 0.01)
    assert "6 of 101 invocations failed" in breached(rate, seen)
    assert breached(latency, seen) is None
    for _ in range(20):
        seen.record(200, 0.5)
    assert "model latency" in breached(latency, seen)


def test_invocations_are_counted_as_cloudwatch_would(stack):
    """What IDLE_STOP_HOURS reads locally: the endpoint's invocations in a time window."""
    from datetime import datetime, timedelta, timezone

    _start(stack, "pets-11111111")
    before = datetime.now(timezone.utc)
    for _ in range(3):
        stack["endpoints"].invoke(ENDPOINT, b"x", "image/jpeg", "application/json")
    after = datetime.now(timezone.utc)
    assert stack["endpoints"].invocations(ENDPOINT, before, after) == 3
    assert stack["endpoints"].invocations(ENDPOINT, after + timedelta(seconds=1), after + timedelta(hours=1)) == 0
    assert stack["endpoints"].invocations("droptrain-dev-other", before, after) == 0
