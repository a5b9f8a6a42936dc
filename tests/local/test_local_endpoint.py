"""The local endpoint: dynamic batching of concurrent requests, and model swaps under load."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalice_app.adapters.runtime import ModelError
from droptrain.local import sagemaker as local_sagemaker
from droptrain.local.batching import DynamicBatcher
from droptrain.local.bucket import LocalBucket
from droptrain.local.endpoint import LocalEndpoints
from droptrain.local.runtime import BUCKET
from droptrain.local.store import Store


# -- the batcher --------------------------------------------------------------------------------


class Gate:
    """A batch function that holds its first batch until released, so that others queue behind it."""

    def __init__(self, fail_on=None):
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self.calls: list[list] = []

    def __call__(self, items):
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [item * 10 for item in items]


def _submit_all(batcher, items):
    pool = ThreadPoolExecutor(len(items))
    return pool, [pool.submit(batcher.submit, item) for item in items]


def _queued(batcher, n, timeout=5):
    deadline = time.time() + timeout
    while batcher._queue.qsize() < n:
        assert time.time() < deadline, "requests did not queue"
        time.sleep(0.005)


def test_requests_waiting_while_the_model_is_busy_run_as_one_batch():
    gate = Gate()
    batcher = DynamicBatcher(gate, max_batch=4, max_delay=0)
    pool, first = _submit_all(batcher, [1])
    assert gate.first_started.wait(5)
    pool2, rest = _submit_all(batcher, [2, 3, 4, 5, 6])
    _queued(batcher, 5)
    gate.release.set()
    assert first[0].result(5) == 10
    assert sorted(f.result(5) for f in rest) == [20, 30, 40, 50, 60]
    assert batcher.batch_sizes == [1, 4, 1], "a lone request runs at once; queued ones share batches of at most 4"
    batcher.close()
    pool.shutdown(), pool2.shutdown()


def test_a_request_that_breaks_its_batch_fails_alone():
    gate = Gate(fail_on=3)
    batcher = DynamicBatcher(gate, max_batch=8, max_delay=0)
    pool, first = _submit_all(batcher, [1])
    assert gate.first_started.wait(5)
    pool2, rest = _submit_all(batcher, [2, 3, 4])
    _queued(batcher, 3)
    gate.release.set()
    outcomes = {}
    for item, future in zip([2, 3, 4], rest):
        try:
            outcomes[item] = future.result(5)
        except ValueError as exc:
            outcomes[item] = str(exc)
    assert outcomes == {2: 20, 3: "cannot do 3", 4: 40}
    batcher.close()
    pool.shutdown(), pool2.shutdown()


def test_close_answers_what_is_queued_and_later_requests_run_inline():
    gate = Gate()
    batcher = DynamicBatcher(gate, max_batch=2, max_delay=0)
    pool, futures = _submit_all(batcher, [1, 2, 3])
    assert gate.first_started.wait(5)
    _queued(batcher, 2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(5)
    assert sorted(f.result(5) for f in futures) == [10, 20, 30]
    assert not batcher._thread.is_alive()
    assert batcher.submit(7) == 70, "a request routed to a closed batcher still gets its answer"
    pool.shutdown()


def test_a_batch_function_returning_the_wrong_count_fails_its_callers():
    batcher = DynamicBatcher(lambda items: [], max_batch=4)
    with pytest.raises(RuntimeError, match="0 results for 1 inputs"):
        batcher.submit(1)
    batcher.close()


# -- the endpoint, with a model a real training job wrote ---------------------------------------


@pytest.fixture
def endpoints(tmp_path, trained_job):
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    bucket.put_file("runs/pets/final/model.tar.gz", trained_job["archive"])
    store = Store(tmp_path / "state.db")
    store.insert("model", "m1", {"ModelName": "m1", "PrimaryContainer": {"ModelDataUrl": f"s3://{BUCKET}/runs/pets/final/model.tar.gz"}})
    for config in ("c1", "c2"):
        store.insert("endpoint-config", config, {"EndpointConfigName": config, "ProductionVariants": [{"ModelName": "m1"}]})
    events: list[dict] = []
    eps = LocalEndpoints(store, bucket, tmp_path / "endpoints", events.append, local_sagemaker.arn,
                         local_sagemaker._event, local_sagemaker.now)
    assert eps.create("ep", "c1", {})
    eps.join()
    assert eps.describe("ep")["EndpointStatus"] == "InService"
    yield eps
    eps.close()


def _images(tiny_dataset, n):
    return [p.read_bytes() for p in sorted((tiny_dataset / "test").rglob("*.jpg"))[:n]]


def test_concurrent_requests_get_their_own_answers(endpoints, tiny_dataset):
    bodies = _images(tiny_dataset, 12)
    serving = endpoints._serving["ep"]
    inference, model = serving.module, serving.model
    expected = [inference.predict_fn(inference.input_fn(b, "image/jpeg"), model).probabilities for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: json.loads(endpoints.invoke("ep", b, "image/jpeg", "application/json; top_k=4")), bodies))
    assert sum(serving.batcher.batch_sizes) == len(bodies)
    for answer, probabilities in zip(answers, expected):
        by_label = {p["label"]: p["probability"] for p in answer["predictions"]}
        for index, label in enumerate(model.classes):
            assert by_label[label] == pytest.approx(float(probabilities[index]), abs=1e-4)


def test_a_bad_request_among_concurrent_ones_fails_alone(endpoints, tiny_dataset):
    bodies = _images(tiny_dataset, 6)
    bodies.insert(3, b"\xff\xd8 not really a jpeg")

    def call(body):
        try:
            return json.loads(endpoints.invoke("ep", body, "image/jpeg", "application/json"))["model"]
        except ModelError as exc:
            return exc.status

    with ThreadPoolExecutor(7) as pool:
        outcomes = list(pool.map(call, bodies))
    assert outcomes[3] == 400
    assert [o for i, o in enumerate(outcomes) if i != 3] == ["pets-1a2b3c4d"] * 6


def test_a_model_swap_under_load_drops_no_request(endpoints, tiny_dataset):
    bodies = _images(tiny_dataset, 4)
    old = endpoints._serving["ep"]
    stop = threading.Event()
    answered, failures = [], []

    def client(body):
        while not stop.is_set():
            try:
                answered.append(json.loads(endpoints.invoke("ep", body, "image/jpeg", "application/json"))["model"])
            except Exception as exc:  # noqa: BLE001 - the test records any failure at all
                failures.append(exc)

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    time.sleep(0.3)
    endpoints.update("ep", "c2")
    endpoints.join()
    before = len(answered)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert failures == []
    assert endpoints.describe("ep")["EndpointConfigName"] == "c2"
    assert endpoints._serving["ep"] is not old and not old.batcher._thread.is_alive()
    assert len(answered) > before, "the new model answers after the swap"
    assert sum(endpoints._serving["ep"].batcher.batch_sizes) > 0


def test_a_lone_client_never_waits_for_company(endpoints, tiny_dataset):
    """One request at a time: batches of one, run as soon as they arrive."""
    serving = endpoints._serving["ep"]
    for body in _images(tiny_dataset, 5):
        endpoints.invoke("ep", body, "image/jpeg", "application/json")
    assert serving.batcher.batch_sizes == [1] * 5


def test_a_model_without_predict_batch_fn_is_served_one_image_at_a_time():
    """Archives packaged before predict_batch_fn existed still deploy: their predict_fn runs per image."""
    from types import SimpleNamespace

    from droptrain.local.endpoint import Serving

    calls = []
    module = SimpleNamespace(predict_fn=lambda item, model: calls.append(item) or (item, model))
    serving = Serving.of("c-old", module, "the-model")
    try:
        assert serving.batcher.submit("image") == ("image", "the-model")
        assert calls == ["image"]
    finally:
        serving.batcher.close()
