"""The inference handlers on the artifact a real training job wrote, loaded as an endpoint loads it."""

import io
import json

import pytest
import torch
from PIL import Image

from helpers import extract, png_bytes
from droptrain.container import load_inference_module


@pytest.fixture(scope="module")
def endpoint(trained_job, tmp_path_factory):
    model_dir = extract(trained_job["archive"], tmp_path_factory.mktemp("endpoint"))
    inference = load_inference_module(model_dir / "code")
    return inference, inference.model_fn(str(model_dir))


def _predict(endpoint, body, content_type="image/jpeg", accept="application/json"):
    inference, model = endpoint
    out, out_type = inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), model), accept)
    assert out_type == "application/json"
    return json.loads(out)


def test_answers_the_predict_shape_with_dataset_labels(endpoint, tiny_dataset):
    _, model = endpoint
    image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
    answer = _predict(endpoint, image.read_bytes())
    assert set(answer) == {"predictions", "model"}
    assert answer["model"] == "pets-1a2b3c4d"
    labels = [p["label"] for p in answer["predictions"]]
    assert len(labels) == 4 and set(labels) == set(model.classes), "top 5 capped at the 4 classes"
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_same_predictions_as_training_evaluated(endpoint, tiny_dataset, trained_job):
    """One transform source: the endpoint's accuracy on the test split is the job's test accuracy."""
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())
    images = sorted((tiny_dataset / "test").rglob("*.jpg"))
    correct = sum(_predict(endpoint, p.read_bytes(), accept="application/json; top_k=1")["predictions"][0]["label"] == p.parent.name
                  for p in images)
    assert correct / len(images) == pytest.approx(meta["metrics"]["test_accuracy"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_png_in_any_mode(endpoint, tiny_dataset, mode):
    source = Image.open(sorted((tiny_dataset / "test").rglob("*.jpg"))[0])
    if mode == "P":
        image = source.convert("P")
        image.info["transparency"] = 0
        body = png_bytes(image, transparency=0)
    elif mode == "I;16":
        body = png_bytes(source.convert("L").convert("I;16"))
    else:
        body = png_bytes(source.convert(mode))
    answer = _predict(endpoint, body, "image/png")
    assert len(answer["predictions"]) == 4


def test_x_image_and_content_type_parameters(endpoint, tiny_dataset):
    body = sorted((tiny_dataset / "test").rglob("*.jpg"))[0].read_bytes()
    assert _predict(endpoint, body, "application/x-image")["predictions"]
    assert _predict(endpoint, body, "image/jpeg; charset=binary")["predictions"]


def test_top_k_through_accept(endpoint, tiny_dataset):
    body = sorted((tiny_dataset / "test").rglob("*.jpg"))[0].read_bytes()
    assert len(_predict(endpoint, body, accept="application/json; top_k=2")["predictions"]) == 2


def test_errors(endpoint):
    inference, model = endpoint
    with pytest.raises(inference.UnsupportedContentTypeError, match="unsupported content type 'text/plain'") as info:
        inference.input_fn(b"hello", "text/plain")
    assert info.value.status == 415
    with pytest.raises(inference.InvalidImageError, match="not a decodable") as info:
        inference.input_fn(b"\x89PNG\r\n\x1a\n garbage", "image/png")
    assert info.value.status == 400
    with pytest.raises(inference.InvalidImageError, match="empty"):
        inference.input_fn(b"", "image/jpeg")
    truncated = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(truncated, format="JPEG")
    with pytest.raises(inference.InvalidImageError):
        inference.input_fn(truncated.getvalue()[:200], "image/jpeg")
    prediction = inference.predict_fn(Image.new("RGB", (48, 48)), model)
    for bad in ("0", "21", "x"):
        with pytest.raises(inference.InvalidTopKError):
            inference.output_fn(prediction, f"application/json; top_k={bad}")
    with pytest.raises(inference.UnsupportedAcceptError) as info:
        inference.output_fn(prediction, "text/csv")
    assert info.value.status == 406


def test_a_batch_answers_as_single_requests_do(endpoint, tiny_dataset):
    inference, model = endpoint
    images = [inference.input_fn(p.read_bytes(), "image/jpeg") for p in sorted((tiny_dataset / "test").rglob("*.jpg"))[:6]]
    batched = inference.predict_batch_fn(images, model)
    assert len(batched) == len(images)
    for image, prediction in zip(images, batched):
        single = inference.predict_fn(image, model)
        assert prediction.probabilities.shape == single.probabilities.shape == (len(model.classes),)
        assert torch.allclose(prediction.probabilities, single.probabilities, atol=1e-5)
