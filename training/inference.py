"""SageMaker inference handlers for a droptrain model (the PyTorch inference toolkit's four functions).

``model_fn`` loads the model once per worker; ``input_fn`` decodes JPEG/PNG bytes (any mode) with
the same eval transform that training evaluated with; ``predict_fn`` returns class probabilities
(``predict_batch_fn`` does the same for several images in one forward pass, for a server that
batches concurrent requests); ``output_fn`` answers the ``/predict`` JSON::

    {"predictions": [{"label": "Beagle", "probability": 0.93}, ...], "model": "<run-id>"}

How many predictions: ``top_k`` as a parameter of the Accept type
(``application/json; top_k=3``), 1–20, default 5, capped at the number of classes.

Errors are typed (``InferenceError`` and subclasses, each with an HTTP ``status``), so a server
maps them to a status code at its edge: 415 for a content type we do not read, 400 for bytes that
are not a decodable image or a bad ``top_k``, 406 for an Accept type we cannot answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from trainlib.models import build_model
from trainlib.transforms import decode_image, eval_transform

log = logging.getLogger(__name__)

IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
DEFAULT_TOP_K = 5
MAX_TOP_K = 20


class InferenceError(Exception):
    status = 500


class UnsupportedContentTypeError(InferenceError):
    status = 415


class InvalidImageError(InferenceError):
    status = 400


class InvalidTopKError(InferenceError):
    status = 400


class UnsupportedAcceptError(InferenceError):
    status = 406


@dataclass
class LoadedModel:
    model: torch.nn.Module
    classes: list[str]
    run_id: str
    transform: object
    device: torch.device
    metadata: dict


def _media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``"application/json; top_k=3"`` -> ``("application/json", {"top_k": "3"})``."""
    if not value:
        return "", {}
    kind, *params = value.split(";")
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"')
    return kind.strip().lower(), parsed


def model_fn(model_dir: str) -> LoadedModel:
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(meta["arch"], len(meta["classes"]), weights="none")
    state = torch.load(Path(model_dir) / "model.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    norm = meta["normalization"]
    return LoadedModel(
        model=model,
        classes=list(meta["classes"]),
        run_id=meta.get("run_id", ""),
        transform=eval_transform(int(meta["image_size"]), norm["mean"], norm["std"]),
        device=device,
        metadata=meta,
    )


def input_fn(request_body: bytes, content_type: str) -> Image.Image:
    kind, _ = _media_type(content_type)
    if kind not in IMAGE_CONTENT_TYPES:
        raise UnsupportedContentTypeError(
            f"unsupported content type {content_type!r}; send one of {', '.join(IMAGE_CONTENT_TYPES)}"
        )
    if isinstance(request_body, bytearray):
        request_body = bytes(request_body)
    if not request_body:
        raise InvalidImageError("the request body is empty; send the image bytes")
    try:
        return decode_image(request_body)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"the request body is not a decodable JPEG or PNG image ({exc})") from exc


@dataclass
class Prediction:
    """What ``predict_fn`` hands ``output_fn``: probabilities and the labels to read them with."""

    probabilities: torch.Tensor
    classes: list[str]
    run_id: str

    def top(self, top_k: int) -> dict:
        k = min(top_k, len(self.classes))
        values, indices = torch.topk(self.probabilities, k)
        return {
            "predictions": [
                {"label": self.classes[i], "probability": round(float(v), 6)}
                for v, i in zip(values.tolist(), indices.tolist())
            ],
            "model": self.run_id,
        }


def predict_fn(image: Image.Image, model: LoadedModel) -> Prediction:
    return predict_batch_fn([image], model)[0]


@torch.no_grad()
def predict_batch_fn(images: list[Image.Image], model: LoadedModel) -> list[Prediction]:
    """Several decoded images in one forward pass (a server that batches requests calls this)."""
    batch = torch.stack([model.transform(image) for image in images]).to(model.device)
    probabilities = torch.softmax(model.model(batch).float(), dim=1).cpu()
    return [Prediction(p, model.classes, model.run_id) for p in probabilities]


def parse_top_k(value: str | int | None) -> int:
    if value is None or value == "":
        return DEFAULT_TOP_K
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        raise InvalidTopKError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {value!r}") from None
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidTopKError(f"top_k must be from 1 to {MAX_TOP_K}, got {top_k}")
    return top_k


def output_fn(prediction: Prediction, accept: str | None = JSON_CONTENT_TYPE) -> tuple[str, str]:
    kind, params = _media_type(accept or JSON_CONTENT_TYPE)
    if kind not in (JSON_CONTENT_TYPE, "*/*", ""):
        raise UnsupportedAcceptError(f"cannot answer {accept!r}; accept {JSON_CONTENT_TYPE}")
    return json.dumps(prediction.top(parse_top_k(params.get("top_k")))), JSON_CONTENT_TYPE
