"""The model behind an endpoint: rebuilt from its artifact folder, fed request bytes, answering top labels.

Plain torch and Pillow, no serving framework: ``serve_app.py`` puts it behind Ray Serve, and the
benchmarks and tests call it in-process. Decoding goes by content (JPEG and PNG magic bytes,
whatever the request's Content-Type said) and checks the image's dimensions from its header before
any pixel is decoded, so a small file cannot claim gigabytes of memory. The eval transform is the
one evaluation used (``trainlib.transforms``), so the endpoint answers as the job's test split was
scored.

Errors are typed, each with its HTTP status and code (the ``{"error": {"code", "message"}}`` body
of docs/rest-api.md); the serving edge maps them and nothing else.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trainlib import explain
from trainlib.calibration import abstains
from trainlib.errors import (
    MAX_BODY_BYTES,
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionError,
    PayloadTooLargeError,
)
from trainlib.models import build_model
from trainlib.transforms import eval_transform, resize_size, to_rgb, to_rgb_reduced

log = logging.getLogger(__name__)

# Checked from the header before decoding: 40 megapixels is a large camera photo; a longer side
# more than 20 times the shorter is no photo, and resizing its short side to the network's input
# would blow it up (a 100000x1 PNG of 373 bytes would need gigabytes).
MAX_PIXELS = 40_000_000
MAX_ASPECT = 20
# A decoded image is reduced by a whole factor while its short side stays at least this (above the
# largest input of torchvision's classification backbones, 480), before any conversion touches its
# pixels; a JPEG is decoded at 1/2, 1/4 or 1/8 scale to it directly. At 1024 a 40-megapixel image with
# a 2,000-pixel short side was converted whole: about 500 MB for one request (docs/performance.md).
WORKING_SIDE = 512
# The endpoint answers this many labels (all of them when there are fewer); the API trims to top_k.
TOP_LABELS = 20
FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


@dataclass(frozen=True)
class Options:
    """What a request asks beyond the labels: an explanation, a confidence floor of its own."""

    explain: bool = False
    min_confidence: float | None = None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]]) -> Options:
        """From query-string pairs; ``InvalidOptionError`` (400) for a value out of its range."""
        values = dict(pairs)
        explain = values.get("explain", "false").strip().lower()
        if explain not in ("true", "false"):
            raise InvalidOptionError(f"explain must be true or false, got {explain[:40]!r}", "invalid_explain")
        raw = values.get("min_confidence")
        return cls(explain == "true", None if raw in (None, "") else min_confidence(raw))


def min_confidence(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise InvalidOptionError(
            f"min_confidence must be a number from 0 to 1, got {raw[:40]!r}", "invalid_min_confidence"
        )
    return value


def sniff(body: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"`` or ``None``, from the first bytes."""
    return next((fmt for magic, fmt in FORMATS.items() if body.startswith(magic)), None)


def check_dimensions(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; one side may be at most {MAX_ASPECT} times the other"
        )


def decode(body: bytes | bytearray | memoryview | None) -> Image.Image:
    """Request bytes to an RGB image, or the error the request deserves."""
    body = bytes(body or b"")
    if not body:
        raise InvalidImageError("the request body is empty; send the image bytes")
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the image is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes")
    fmt = sniff(body)
    if fmt is None:
        raise InvalidImageError("the body is not a JPEG or PNG image")
    try:
        with Image.open(io.BytesIO(body), formats=[fmt]) as img:  # PIL refuses over 2 x MAX_IMAGE_PIXELS
            check_dimensions(*img.size)  # from the header: nothing is decoded yet
            # The client's image's size, upright: where an explanation's map is laid back.
            source = img.size[::-1] if img.getexif().get(0x0112) in (5, 6, 7, 8) else img.size
            if fmt == "JPEG":
                img.draft("RGB", (WORKING_SIDE, WORKING_SIDE))  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly
            img.load()
            factor = min(img.size) // WORKING_SIDE
            decoded = to_rgb_reduced(img, factor) if factor >= 2 else to_rgb(img)
            decoded.info["source_size"] = source
            return decoded
    except Image.DecompressionBombError as exc:  # a header claiming hundreds of megapixels
        raise ImageTooLargeError(f"the image has too many pixels ({_plain(exc)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(f"the body is not a decodable {fmt} image ({_plain(exc)})") from None


def _plain(exc: BaseException) -> str:
    """The decoder's reason without Python object reprs (``<_io.BytesIO object at 0x…>``)."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__


@dataclass
class Classifier:
    model: torch.nn.Module
    classes: list[str]
    run_id: str
    transform: Any
    device: torch.device
    image_size: int = 224
    arch: str = "resnet18"
    # trainlib.calibration: logits are divided by the temperature; an answer whose best class is below
    # min_confidence or its class's threshold abstains.
    temperature: float = 1.0
    min_confidence: float = 0.0
    thresholds: dict[str, float | None] = field(default_factory=dict)
    resize_size: int = 256  # the short side before the centre crop
    # An ONNX Runtime session of the artifact's model.onnx (the calibrated logits), where model.json's
    # serving_engine says onnxruntime and this is a CPU; else None and the PyTorch model predicts.
    session: Any = None

    @classmethod
    def load(cls, model_dir: Path, device: str | None = None) -> Classifier:
        """The model in ``model_dir`` (``model.json`` + ``model.pth``), on the GPU when there is one."""
        meta = json.loads((model_dir / "model.json").read_text())
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_model(meta["arch"], len(meta["classes"]), weights="none")
        # weights_only: the state dict holds tensors alone, and nothing in it may run code.
        model.load_state_dict(torch.load(model_dir / "model.pth", map_location="cpu", weights_only=True))
        model.to(target).eval()
        norm = meta["normalization"]
        calibration = meta.get("calibration") or {}  # models trained before calibration: as they were
        resize = int(meta.get("resize_size") or resize_size(int(meta["image_size"])))
        session = (
            _onnx_session(model_dir) if meta.get("serving_engine") == "onnxruntime" and target.type == "cpu" else None
        )
        return cls(
            model,
            list(meta["classes"]),
            meta.get("run_id", ""),
            eval_transform(int(meta["image_size"]), norm["mean"], norm["std"], resize),
            target,
            int(meta["image_size"]),
            meta["arch"],
            float(calibration.get("temperature") or 1.0),
            float(calibration.get("min_confidence") or 0.0),
            dict(calibration.get("thresholds") or {}),
            resize,
            session,
        )

    def fastest_batch(self, largest: int, rounds: int = 2) -> int:
        """The batch size (a power of two up to ``largest``) at which ``predict`` answers the most images a
        second on this machine, timed on blank images. On a GPU that is usually the largest; on a
        few CPU cores a big model slows down past a small batch (ResNet-50 on two cores: batches of 8
        answer 10-25% fewer images a second than batches of 2, and of 16 a third fewer).

        Every size runs once untimed first (a new shape allocates), then the sizes are timed in turns,
        ``rounds`` times, each keeping its best: timed one after the other, a drift in the machine's
        speed (tens of percent over minutes on a shared VM) would favour whichever ran in a fast moment."""
        blank = Image.new("RGB", (self.image_size, self.image_size))
        sizes = _powers_of_two(largest)
        for size in sizes:
            self.predict([blank] * size)
        best = {size: math.inf for size in sizes}
        for _ in range(max(1, rounds)):
            for size in sizes:
                best[size] = min(best[size], _timed(lambda size=size: self.predict([blank] * size)))
        return fastest(sizes, best.__getitem__)

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """One forward pass for all ``images``; each answer is the API's ``{"predictions", "abstained", "model"}``."""
        batch = torch.stack([self.transform(image) for image in images])
        if self.session is not None:  # model.onnx divides by the temperature itself
            (calibrated,) = self.session.run(None, {"images": batch.numpy()})
            return self._answers(torch.from_numpy(calibrated), temperature=1.0)
        with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
            logits = self.model(batch.to(self.device))
        return self._answers(logits)

    def explain(self, image: Image.Image) -> dict[str, Any]:
        """``predict``'s answer for one image, with the Grad-CAM ``explanation`` of its top class."""
        layer_name, layer = explain.target_layer(self.arch, self.model, self.image_size)
        logits, cam = explain.grad_cam(self.model, layer, self.transform(image).unsqueeze(0).to(self.device))
        answer = self._answers(logits)[0]
        source = image.info.get("source_size", image.size)
        answer["explanation"] = {
            "method": explain.METHOD,
            "layer": layer_name,
            **explain.lay_back(cam, self.image_size, self.resize_size, source),
        }
        return answer

    def abstains(self, answer: dict[str, Any], min_confidence: float | None = None) -> bool:
        """Whether ``answer``'s best label is "not sure" (its probability as answered, rounded), with
        ``min_confidence`` in place of the model's own when given."""
        best = answer["predictions"][0]
        floor = self.min_confidence if min_confidence is None else min_confidence
        return abstains(best["probability"], best["label"], self.thresholds, floor)

    def _answers(self, logits: torch.Tensor, temperature: float | None = None) -> list[dict[str, Any]]:
        divisor = self.temperature if temperature is None else temperature
        probabilities = torch.softmax(logits.float() / divisor, dim=1).cpu()
        values, indices = torch.topk(probabilities, min(TOP_LABELS, len(self.classes)), dim=1)
        answers = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            answer: dict[str, Any] = {
                "predictions": [
                    {"label": self.classes[i], "probability": round(float(v), 6)}
                    for v, i in zip(row_values, row_indices)
                ],
                "model": self.run_id,
            }
            answer["abstained"] = self.abstains(answer)
            answers.append(answer)
        return answers


def _onnx_session(model_dir: Path) -> Any:
    """ONNX Runtime on the artifact's ``model.onnx``, every core of the replica to one intra-op pool (as the
    application gives torch); ``None``, with a warning, where it cannot run: PyTorch then predicts, the
    same answers (``trainlib.export`` checked them), only slower."""
    try:
        import onnxruntime  # only an artifact served by ONNX Runtime needs it installed
    except ImportError:
        log.warning("model.json asks for onnxruntime, which is not installed: serving with PyTorch")
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    try:
        return onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; any of them means "serve with torch"
        log.warning("model.onnx cannot be loaded by onnxruntime (%s): serving with PyTorch", exc)
        return None


def fastest(sizes: Sequence[int], seconds: Callable[[int], float]) -> int:
    """The size in ``sizes`` with the most items a second, ``seconds(size)`` being one batch's time."""
    return max(sizes, key=lambda size: size / seconds(size))


def _powers_of_two(largest: int) -> list[int]:
    return [1 << power for power in range(max(1, largest).bit_length())]


def _timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began
