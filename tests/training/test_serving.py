"""Serving a model a real training job wrote: the predictor in-process, and the archive under Ray Serve
started exactly as AWS's Ray Serve container starts it (config.yaml, the application imported from the
archive's root, HTTP on its route)."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from helpers import extract, png_bytes, png_header_only
from trainlib import predictor
from trainlib.calibration import reliability
from trainlib.errors import BATCH_ACCEPT
from trainlib.predictor import Classifier, decode


@pytest.fixture(scope="module")
def model_dir(trained_job, tmp_path_factory) -> Path:
    return extract(trained_job["archive"], tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def classifier(model_dir) -> Classifier:
    return Classifier.load(model_dir)


def _test_images(tiny_dataset, n=None) -> list[Path]:
    images = sorted((tiny_dataset / "test").rglob("*.jpg"))
    return images[:n] if n else images


def _jpeg(size=(64, 64), color="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


# -- the predictor, in-process ---------------------------------------------------------------------


def test_answers_every_label_most_probable_first(classifier, tiny_dataset):
    (answer,) = classifier.predict([decode(_test_images(tiny_dataset, 1)[0].read_bytes())])
    assert set(answer) == {"predictions", "abstained", "model"} and answer["model"] == "pets-1a2b3c4d"
    labels = [p["label"] for p in answer["predictions"]]
    assert sorted(labels) == sorted(classifier.classes), "all 4 labels: fewer than the 20 an endpoint answers"
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_same_predictions_as_training_evaluated(classifier, tiny_dataset, trained_job):
    """One transform source: the endpoint's accuracy on the test split is the job's test accuracy."""
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())
    images = _test_images(tiny_dataset)
    answers = classifier.predict([decode(p.read_bytes()) for p in images])
    correct = sum(a["predictions"][0]["label"] == p.parent.name for a, p in zip(answers, images))
    assert correct / len(images) == pytest.approx(meta["metrics"]["test_accuracy"])


def test_a_batch_answers_as_single_requests_do(classifier, tiny_dataset):
    images = [decode(p.read_bytes()) for p in _test_images(tiny_dataset, 6)]
    batched = classifier.predict(images)
    for image, answer in zip(images, batched):
        (single,) = classifier.predict([image])
        assert [p["label"] for p in single["predictions"]] == [p["label"] for p in answer["predictions"]]
        for a, b in zip(single["predictions"], answer["predictions"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_the_fastest_batch_is_the_size_with_the_most_images_a_second():
    # ResNet-50 on two cores, seconds per batch: 2 images at once beat 1, and bigger batches lose.
    seconds = {1: 0.032, 2: 0.058, 4: 0.140, 8: 0.300, 16: 0.800}
    assert predictor.fastest([1, 2, 4, 8, 16], seconds.__getitem__) == 2
    assert predictor.fastest([1, 2, 4, 8, 16], lambda size: 0.01 + 0.001 * size) == 16, (
        "a GPU's fixed cost: biggest wins"
    )


def test_the_classifier_times_itself_at_powers_of_two_up_to_the_largest(classifier, monkeypatch):
    timed = []
    predict = classifier.predict
    monkeypatch.setattr(classifier, "predict", lambda images: timed.append(len(images)) or predict(images))
    best = classifier.fastest_batch(12)
    assert sorted(set(timed)) == [1, 2, 4, 8] and best in (1, 2, 4, 8)
    # Each size once untimed, then the sizes in turns, round after round: a drift in the machine's
    # speed reaches every size, not only the ones timed last.
    assert timed == [1, 2, 4, 8] * 3
    timed.clear()
    assert classifier.fastest_batch(1) == 1 and set(timed) == {1}


def test_the_application_batches_no_more_than_its_model_runs_fastest_at(model_dir, monkeypatch):
    import serve_app

    monkeypatch.setattr(Classifier, "fastest_batch", lambda self, largest: 2 if largest == serve_app.MAX_BATCH else 0)
    replica = serve_app.ImageClassifier.func_or_class(str(model_dir))
    try:
        assert replica._predict._get_max_batch_size() == 2
    finally:  # the batch queue's settings belong to the class, in this process
        replica._predict.set_max_batch_size(serve_app.MAX_BATCH)


def test_building_the_application_imports_no_torch(model_dir):
    """Serve imports the archive's module in a process of its own just to build the application, before
    any replica starts: torch is imported by the replica that loads the model, not there too."""
    import subprocess
    import sys

    probe = "import sys, serve_app; serve_app.app; print(sorted({'torch', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=model_dir, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    clear_red = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    if mode == "P":
        image = Image.new("P", (8, 8), 0)
        image.putpalette([255, 0, 0] * 256)
        body = png_bytes(image, transparency=0)
    else:
        body = png_bytes(clear_red.convert(mode))
    decoded = decode(body)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3)) == (255, 255, 255), "transparent pixels are white, not the colour under them"


def test_sixteen_bit_and_grayscale_pngs_keep_their_brightness():
    gray = Image.new("L", (8, 8), 200)
    assert decode(png_bytes(gray)).getpixel((0, 0)) == (200, 200, 200)
    sixteen = Image.new("I;16", (8, 8), 200 * 256)
    assert decode(png_bytes(sixteen)).getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize(
    "body, error, code",
    [
        (b"", predictor.InvalidImageError, "invalid_image"),
        (b"hello, I am text", predictor.InvalidImageError, "invalid_image"),
        (b"\x89PNG\r\n\x1a\n garbage", predictor.InvalidImageError, "invalid_image"),
        (b"GIF89a" + b"\0" * 64, predictor.InvalidImageError, "invalid_image"),
        (_jpeg()[:200], predictor.InvalidImageError, "invalid_image"),
        (png_header_only(100_000, 1), predictor.ImageTooLargeError, "image_too_large"),
        (png_header_only(7_000, 7_000), predictor.ImageTooLargeError, "image_too_large"),
        (b"\xff\xd8\xff" + b"\0" * (predictor.MAX_BODY_BYTES + 1), predictor.PayloadTooLargeError, "payload_too_large"),
    ],
)
def test_bad_bodies_get_their_error(body, error, code):
    with pytest.raises(error) as info:
        decode(body)
    assert info.value.code == code and info.value.status in (400, 413)
    assert info.value.body()["error"]["code"] == code


# -- the archive under Ray Serve, as the container serves it -------------------------------------------


@pytest.fixture(scope="module")
def container(model_dir, ray_serve):
    """The container's start-up: config.yaml as it is (its name, route /), the archive's root on PYTHONPATH."""
    (app,) = yaml.safe_load((model_dir / "config.yaml").read_text())["applications"]
    ray_serve.deploy(app["name"], model_dir, route_prefix=app["route_prefix"])
    yield ray_serve
    ray_serve.delete(app["name"])


def _post(
    serving, body: bytes, content_type: str = "image/jpeg", headers: dict | None = None, path: str = "/"
) -> tuple[int, dict]:
    """What the container's SageMaker adapter does with /invocations: POST the bytes to the route '/'."""
    conn = http.client.HTTPConnection(serving.host, serving.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_container_answers_jpeg_and_png_as_the_model_does(container, classifier, tiny_dataset):
    image = _test_images(tiny_dataset, 1)[0]
    status, answer = _post(container, image.read_bytes())
    assert status == 200
    (expected,) = classifier.predict([decode(image.read_bytes())])
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected["predictions"]]
    assert answer["model"] == "pets-1a2b3c4d"
    as_png = png_bytes(Image.open(image))
    status, answer = _post(container, as_png, "application/octet-stream")
    assert status == 200 and len(answer["predictions"]) == 4, "decoded by content, whatever the Content-Type"


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"", 400, "invalid_image"),
        (b"not an image at all", 400, "invalid_image"),
        (_jpeg()[:300], 400, "invalid_image"),
        (png_header_only(100_000, 1), 400, "image_too_large"),
        (b"\xff\xd8\xff" + b"\0" * (predictor.MAX_BODY_BYTES + 10), 413, "payload_too_large"),
    ],
)
def test_the_container_answers_bad_input_with_its_documented_status(container, body, status, code):
    answered, payload = _post(container, body)
    assert (answered, payload["error"]["code"]) == (status, code), payload


def test_the_container_takes_options_from_the_query_or_sagemakers_custom_attributes(
    container, tiny_dataset, classifier
):
    body = _test_images(tiny_dataset, 1)[0].read_bytes()
    status, answer = _post(container, body, path="/?min_confidence=1")
    assert status == 200 and answer["abstained"] is True and len(answer["predictions"]) == 4
    status, answer = _post(container, body, path="/?min_confidence=0")
    assert status == 200 and answer["abstained"] == classifier.abstains(answer, 0.0)
    # InvokeEndpoint's CustomAttributes reach the container as this header (what the API sends).
    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "explain=true&min_confidence=1"}
    status, answer = _post(container, body, headers=attributes)
    assert status == 200 and answer["abstained"] is True
    explanation = answer["explanation"]
    assert explanation["method"] == "grad-cam" and explanation["size"] == [48, 48]
    heatmap = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"])))
    assert heatmap.size == (48, 48) and heatmap.mode == "L"
    (plain,) = classifier.predict([decode(body)])
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in plain["predictions"]]
    for path, code in (("/?min_confidence=2", "invalid_min_confidence"), ("/?explain=maybe", "invalid_explain")):
        status, answer = _post(container, body, path=path)
        assert (status, answer["error"]["code"]) == (400, code)


def test_a_batch_transform_record_is_one_line_whatever_the_image(container, tiny_dataset, classifier):
    # Batch Transform sends TransformOutput.Accept with every record: a 4xx there would fail the whole job.
    batch = {"Accept": BATCH_ACCEPT}
    body = _test_images(tiny_dataset, 1)[0].read_bytes()
    status, line = _post(container, body, headers=batch)
    (expected,) = classifier.predict([decode(body)])
    assert status == 200 and set(line) == {"predictions", "abstained", "error"} and line["error"] is None
    assert line["predictions"] == expected["predictions"] and line["abstained"] == expected["abstained"]
    for bad, code in ((b"not an image at all", "invalid_image"), (png_header_only(100_000, 1), "image_too_large")):
        status, line = _post(container, bad, headers=batch)
        assert (status, line["predictions"], line["abstained"], line["error"]["code"]) == (200, [], None, code)


def test_concurrent_requests_are_answered_each_their_own(container, tiny_dataset, classifier):
    images = _test_images(tiny_dataset, 12)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: _post(container, p.read_bytes()), images))
    expected = classifier.predict([decode(p.read_bytes()) for p in images])
    assert all(status == 200 for status, _ in answers)
    for (_, answer), wanted in zip(answers, expected):
        assert answer["predictions"][0]["label"] == wanted["predictions"][0]["label"]
        assert answer["predictions"][0]["probability"] == pytest.approx(
            wanted["predictions"][0]["probability"], abs=1e-4
        )


def test_the_local_ray_serves_http_through_haproxy(container, tiny_dataset):
    """Ray Serve's high-throughput mode, as the local runtime starts Ray on Linux (``ray[serve]`` bundles
    HAProxy there): the route is answered through this Ray's own HAProxy, not Ray's Python proxy."""
    import ray

    from droptrain.local.engines.ray_mode import throughput_mode

    assert throughput_mode(), "ray[serve] brings an HAProxy binary on Linux"
    status, _ = _post(container, _test_images(tiny_dataset, 1)[0].read_bytes())
    node = ray.get_runtime_context().get_node_id()
    ours = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(args[0].decode()).name == "haproxy" and any(node.encode() in arg for arg in args):
            ours.append(pid)
    assert status == 200 and ours, "an HAProxy configured for this Ray node serves the route"


# -- calibration and abstention, as the job measured them and serving applies them --------------------


def _probabilities(answers, classes) -> torch.Tensor:
    """Each answer's probabilities back in class order (the tiny model answers all 4 labels)."""
    rows = [{p["label"]: p["probability"] for p in a["predictions"]} for a in answers]
    return torch.tensor([[row[name] for name in classes] for row in rows])


def test_serving_applies_the_temperature_the_job_measured(classifier, tiny_dataset, trained_job):
    report = json.loads((trained_job["paths"].output_data / "evaluation.json").read_text())["calibration"]
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())["calibration"]
    assert report["split"] == "test" and len(report["bins"]) == 15
    assert report["ece_after"] <= report["ece_before"], "never worse on the test split"
    assert classifier.temperature == meta["temperature"] == report["temperature"]
    images = _test_images(tiny_dataset)
    targets = torch.tensor([classifier.classes.index(p.parent.name) for p in images])
    decoded = [decode(p.read_bytes()) for p in images]
    assert sum(b["count"] for b in report["bins"]) == len(images)
    # The endpoint's probabilities on the test split have the calibration error the job reported after
    # scaling, and the unscaled model's the one before.
    ece_after, _ = reliability(_probabilities(classifier.predict(decoded), classifier.classes), targets)
    unscaled = dataclasses.replace(classifier, temperature=1.0)
    ece_before, _ = reliability(_probabilities(unscaled.predict(decoded), classifier.classes), targets)
    assert (ece_after, ece_before) == pytest.approx((report["ece_after"], report["ece_before"]), abs=2e-3)


def test_an_answer_below_its_class_threshold_abstains(classifier, tiny_dataset, trained_job):
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())["calibration"]
    assert meta["target_precision"] == 0.9 and set(meta["thresholds"]) == set(classifier.classes)
    answers = classifier.predict([decode(p.read_bytes()) for p in _test_images(tiny_dataset)])
    for answer in answers:
        best = answer["predictions"][0]
        threshold = meta["thresholds"][best["label"]] or 0.0
        assert answer["abstained"] == (best["probability"] < max(threshold, meta["min_confidence"]))
        assert classifier.abstains(answer, 1.0) == (best["probability"] < 1.0), "a floor of 1: all but certainty"
    # Thresholds of 1 (a class never precise enough): every answer short of certainty abstains, with its labels.
    strict = dataclasses.replace(classifier, thresholds=dict.fromkeys(classifier.classes, 1.0))
    for answer in strict.predict([decode(p.read_bytes()) for p in _test_images(tiny_dataset)]):
        assert (
            answer["abstained"] == (answer["predictions"][0]["probability"] < 1.0) and len(answer["predictions"]) == 4
        )
