"""Local endpoints on Ray Serve: a real training job's archive, concurrent requests, blue/green updates."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalice_app.adapters.runtime import EndpointNotFoundError, ModelError
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.runtime import BUCKET
from droptrain.local.sagemaker.endpoint import LocalEndpoints
from droptrain.local.store import Store
from helpers import DEADLINE
from trainlib.predictor import Classifier, decode


def _broken_archive(good, tmp_path):
    """The trained archive with its weights replaced by garbage: it extracts, imports, and fails to load."""
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(good) as src, tarfile.open(broken, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "model.pth":
                data = b"not a state dict"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return broken


def _endpoints(tmp_path, trained_job, ray_serve):
    """Endpoint ``ep`` serving the trained job (config ``c1``), and configs ``c2`` (the same model) and
    ``c3`` (a model that cannot load) to update it to."""
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    bucket.put_file("runs/pets/final/model.tar.gz", trained_job["archive"])
    bucket.put_file("runs/broken/final/model.tar.gz", _broken_archive(trained_job["archive"], tmp_path))
    store = Store(tmp_path / "state.db")
    for model, key in (("m1", "runs/pets/final/model.tar.gz"), ("bad", "runs/broken/final/model.tar.gz")):
        store.insert("model", model, {"ModelName": model, "PrimaryContainer": {"ModelDataUrl": f"s3://{BUCKET}/{key}"}})
    for config, model in (("c1", "m1"), ("c2", "m1"), ("c3", "bad")):
        store.insert(
            "endpoint-config", config, {"EndpointConfigName": config, "ProductionVariants": [{"ModelName": model}]}
        )
    events: list[dict] = []
    eps = LocalEndpoints(store, bucket, tmp_path / "endpoints", events.append, ray_serve)
    eps.events = events
    assert eps.create("ep", "c1", {})
    eps.join(DEADLINE)
    assert eps.describe("ep")["EndpointStatus"] == "InService", eps.describe("ep")
    yield eps
    eps.close()
    assert not [n for n in ray_serve.names() if n.startswith("ep-c")], "closing takes the endpoint's applications down"


@pytest.fixture(scope="module")
def serving(tmp_path_factory, trained_job, ray_serve):
    """One endpoint for the module (each deploy costs seconds): the tests that only call it come first,
    then the updates, in the file's order: a failed one leaves it on ``c1``, the next moves it to ``c2``."""
    yield from _endpoints(tmp_path_factory.mktemp("serving"), trained_job, ray_serve)


def _images(tiny_dataset, n):
    return [p.read_bytes() for p in sorted((tiny_dataset / "test").rglob("*.jpg"))[:n]]


def _invoke(endpoints, body):
    return json.loads(endpoints.invoke("ep", body, "image/jpeg", "application/json"))


class TestOneEndpoint:
    """Calls to one deployed endpoint, which none of these tests changes."""

    def test_concurrent_requests_get_their_own_answers(self, serving, tiny_dataset, trained_job):
        bodies = _images(tiny_dataset, 12)
        classifier = Classifier.load(trained_job["paths"].model)
        expected = classifier.predict([decode(b) for b in bodies])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: _invoke(serving, b), bodies))
        for answer, wanted in zip(answers, expected):
            assert answer["model"] == "pets-1a2b3c4d"
            by_label = {p["label"]: p["probability"] for p in answer["predictions"]}
            for p in wanted["predictions"]:
                assert by_label[p["label"]] == pytest.approx(p["probability"], abs=1e-4)

    def test_a_bad_request_among_concurrent_ones_fails_alone(self, serving, tiny_dataset):
        bodies = _images(tiny_dataset, 6)
        bodies.insert(3, b"\xff\xd8 not really a jpeg")

        def call(body):
            try:
                return _invoke(serving, body)["model"]
            except ModelError as exc:
                return exc.status, json.loads(str(exc))["error"]["code"]

        with ThreadPoolExecutor(7) as pool:
            outcomes = list(pool.map(call, bodies))
        assert outcomes[3] == (400, "invalid_image"), "the container's own 400, passed on as SageMaker's ModelError"
        assert [o for i, o in enumerate(outcomes) if i != 3] == ["pets-1a2b3c4d"] * 6

    def test_a_new_endpoint_whose_model_cannot_start_fails(self, serving):
        assert serving.create("ep-bad", "c3", {})
        serving.join(DEADLINE)
        described = serving.describe("ep-bad")
        assert described["EndpointStatus"] == "Failed" and "could not be deployed" in described["FailureReason"]
        assert serving.events[-1]["detail"]["EndpointStatus"] == "FAILED"
        with pytest.raises(Exception) as info:
            serving.invoke("ep-bad", b"x", "image/jpeg", "application/json")
        assert type(info.value).__name__ == "EndpointNotReadyError"
        with pytest.raises(EndpointNotFoundError):
            serving.invoke("nope", b"x", "image/jpeg", "application/json")


def test_a_version_that_fails_to_start_leaves_the_old_one_serving(serving, tiny_dataset, ray_serve):
    serving.update("ep", "c3")
    serving.join(DEADLINE)
    described = serving.describe("ep")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "c1")
    assert "could not be deployed" in described["FailureReason"]
    assert _invoke(serving, _images(tiny_dataset, 1)[0])["model"] == "pets-1a2b3c4d"
    assert "ep-c3" not in ray_serve.names(), "the failed version was removed"


def test_an_update_under_load_drops_no_request(serving, tiny_dataset, ray_serve):
    bodies = _images(tiny_dataset, 4)
    stop = threading.Event()
    answered, failures = [], []

    def client(body):
        # Each client pauses between its requests: four that never paused kept the one core this worker
        # has so busy that the new version's replica was slow to start (42 to 117 s for this test).
        while not stop.wait(0.2):
            try:
                answered.append(_invoke(serving, body)["model"])
            except Exception as exc:  # noqa: BLE001 - the test records any failure at all
                failures.append(exc)

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    serving.update("ep", "c2")
    serving.join(DEADLINE)
    before = len(answered)
    deadline = time.time() + DEADLINE
    while len(answered) < before + 8 and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(DEADLINE)
    assert failures == []
    assert len(answered) >= before + 8, "the new version answers after the swap"
    described = serving.describe("ep")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "c2")
    assert "ep-c1" not in ray_serve.names() and "ep-c2" in ray_serve.names(), "the old version was taken down"
    assert serving.events[-1]["detail"]["EndpointStatus"] == "IN_SERVICE"


def test_throughput_mode_fits_haproxy_in_the_file_descriptor_limit():
    from droptrain.local.engines.ray_mode import throughput_mode

    for hard in (1024, 4096, 20000, 65536, -1):
        env = throughput_mode(nofile_hard=hard, haproxy="/usr/sbin/haproxy")
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        connections = int(env["RAY_SERVE_HAPROXY_MAXCONN"])
        # HAProxy 2.8 wants 2.5 descriptors a connection and more for itself; Ray's default is 20000.
        assert connections <= 20000 and (hard == -1 or connections * 5 // 2 + 100 < hard), (hard, connections)
    assert throughput_mode(nofile_hard=65536, haproxy="") == {}, "no HAProxy: Ray Serve's defaults"


def test_an_environment_that_chose_ray_serves_mode_keeps_it(tmp_path):
    from droptrain.local.engines.ray_mode import QUIET, ray_environment, throughput_mode

    # Whatever the mode: the replicas share the CPU as equals, and a model that cannot load fails at once.
    # A proxy slow to start or answer on a busy machine is waited for, not killed.
    niceness = {
        "RAY_worker_niceness": "0",
        "RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
        **QUIET,  # and Ray's bookkeeping for a dashboard there is not, off
    }
    assert ray_environment({"RAY_SERVE_ENABLE_HA_PROXY": "0"}, tmp_path) == niceness
    assert set(ray_environment({"RAY_SERVE_ENABLE_HA_PROXY": "1"}, tmp_path)) == {
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_HAPROXY_BINARY_PATH",  # the loopback wrapper, whoever chose HAProxy
        *niceness,
    }
    assert ray_environment({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "PATH": "/bin"}, tmp_path) == niceness
    assert "RAY_worker_niceness" not in ray_environment({"RAY_worker_niceness": "5"}, tmp_path)
    chosen = ray_environment({"RAY_SERVE_HAPROXY_MAXCONN": "1000"}, tmp_path)
    assert "RAY_SERVE_HAPROXY_MAXCONN" not in chosen, "a variable already set keeps its value"
    assert chosen.items() >= {k: v for k, v in throughput_mode().items() if k != "RAY_SERVE_HAPROXY_MAXCONN"}.items()
    # HAProxy's stats and metrics listeners: free ports, not Ray's fixed 8404 and 9101 (a second Ray would fail).
    ports = {chosen["RAY_SERVE_HAPROXY_STATS_PORT"], chosen["RAY_SERVE_HAPROXY_METRICS_PORT"]}
    assert len(ports) == 2 and not ports & {"8404", "9101"}


def test_the_pinned_ray_serve_reads_the_proxy_timeouts_we_set(tmp_path):
    # Ray renames its variables now and then; a name it no longer reads would leave the 5 s default.
    import subprocess
    import sys

    from droptrain.local.engines.ray_mode import ray_environment

    env = {**os.environ, **ray_environment({"RAY_SERVE_ENABLE_HA_PROXY": "0"}, tmp_path)}
    read = "from ray.serve._private import constants as c\n"
    read += "print(c.PROXY_READY_CHECK_TIMEOUT_S, c.PROXY_HEALTH_CHECK_TIMEOUT_S)"
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["120.0", "60.0"]


def test_the_model_shares_the_cpu_with_the_jobs_as_an_equal(ray_serve):
    """Ray starts its workers at nice 15 unless told; the Serve controller, proxy and replicas of the
    local runtime run at this process's own priority, or a busy CPU (a training job) starves them."""
    import psutil

    ours = os.nice(0)
    workers = {}  # command line -> niceness, of Ray's workers still there while they are listed
    for process in psutil.Process().children(recursive=True):
        try:
            command, nice = process.cmdline(), process.nice()
        except psutil.Error:  # a worker Ray ended meanwhile (a replica of an application just deleted)
            continue
        if command[:1] and command[0].startswith("ray::"):
            workers[" ".join(command)] = nice
    assert any("ServeController" in command for command in workers), list(workers)
    assert {command: nice for command, nice in workers.items() if nice != ours} == {}


def test_starting_ray_leaves_this_processs_environment_as_it_was(ray_serve):
    """The jobs and tools the local runtime starts (another ``droptrain up`` among them) get the environment
    it was given, not the variables it started Ray with."""
    import os

    assert not {key for key in os.environ if key.startswith("RAY_SERVE_")}
