"""The trained model in portable formats, each kept only if it answers as the PyTorch model does.

``model.onnx`` (torch's ``torch.export``-based ONNX exporter, opset ``OPSET``, a dynamic batch) and
``model.pt`` (TorchScript, traced) both compute the calibrated logits: the model's logits divided by
its temperature (``trainlib.calibration``), so that a softmax of their output is the endpoint's
probabilities. Input: ``images``, float32 ``(batch, 3, size, size)``, RGB, preprocessed as ``model.json``'s
``preprocessing`` says. Each format runs on up to ``PARITY_IMAGES`` images of the held-out split, and is
kept when its probabilities are within ``MAX_DIFFERENCE`` of PyTorch's and its top-1 labels agree on
every image; otherwise its file is removed and ``export.json`` says why. An export that fails never
fails the job: the PyTorch model is the artifact, these are extras.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
MAX_DIFFERENCE = 1e-4
PARITY_IMAGES = 64
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
# What the Ray Serve container installs (code/requirements.txt) for an artifact served by ONNX Runtime:
# training/requirements.txt's pin (a test keeps them equal).
ONNXRUNTIME = "onnxruntime==1.32.0"


class Calibrated(nn.Module):
    """The model's logits divided by its temperature."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) / self.temperature


def _onnx(module: nn.Module, sample: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime  # imported first: without it the file could not be checked, so it is not written

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress notes, not problems
        program = torch.onnx.export(
            module,
            (sample,),
            input_names=["images"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _torchscript(module: nn.Module, sample: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still asked for
        torch.jit.trace(module, sample).save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda images: loaded(images).detach()


WRITERS = {"onnx": _onnx, "torchscript": _torchscript}


def export(model: nn.Module, temperature: float, images: torch.Tensor, out_dir: Path, split: str) -> dict:
    """Write every format into ``out_dir`` that passes its check; returns ``export.json``'s content."""
    module = Calibrated(model.to("cpu").eval(), temperature).eval()
    images = images.to("cpu", torch.float32)
    with torch.no_grad():
        reference = torch.softmax(module(images), dim=1)
    report: dict = {
        "split": split,
        "images": len(images),
        "opset": OPSET,
        "max_difference": MAX_DIFFERENCE,
        "output": "calibrated logits (softmax gives the endpoint's probabilities)",
        "formats": {},
    }
    for name, writer in WRITERS.items():
        path = out_dir / FILES[name]
        started = time.perf_counter()
        try:
            with torch.no_grad():
                run = writer(module, images[:1], path)
                probabilities = torch.softmax(run(images).float(), dim=1)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is recorded, never the job's end
            path.unlink(missing_ok=True)
            report["formats"][name] = {"kept": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log.warning("%s export failed: %s", name, exc)
            continue
        report["formats"][name] = _checked(path, reference, probabilities, time.perf_counter() - started)
    return report


def _checked(path: Path, reference: torch.Tensor, probabilities: torch.Tensor, seconds: float) -> dict:
    difference = float((probabilities - reference).abs().max())
    agreement = float((probabilities.argmax(1) == reference.argmax(1)).float().mean())
    entry = {
        "file": path.name,
        "max_abs_difference": difference,
        "top1_agreement": agreement,
        "seconds": round(seconds, 1),
        "kept": difference <= MAX_DIFFERENCE and agreement == 1.0,
    }
    if not entry["kept"]:
        path.unlink(missing_ok=True)
        entry["reason"] = (
            f"probabilities differ by up to {difference:.2e} from PyTorch's (at most {MAX_DIFFERENCE:g}), "
            f"top-1 agreement {agreement:.2%} (100% needed)"
        )
    return entry


def parity_images(samples: Sequence[tuple[Path, int]], transform: Callable, limit: int = PARITY_IMAGES) -> torch.Tensor:
    """Up to ``limit`` of the split's images, decoded and preprocessed as evaluation saw them."""
    from trainlib.transforms import open_image

    tensors = []
    for path, _ in samples:
        if len(tensors) == limit:
            break
        try:
            tensors.append(transform(open_image(path)))
        except (OSError, ValueError):
            continue  # an undecodable image was skipped by evaluation too
    return torch.stack(tensors) if tensors else torch.empty(0)


def export_step(
    model: nn.Module,
    meta: dict,
    samples: Sequence[tuple[Path, int]],
    split: str,
    model_dir: Path,
    report_dir: Path,
    engine: str = "torch",
) -> dict:
    """The final job's export of the model ``meta`` (``model.json``) describes: into the model dir (so into
    ``model.tar.gz``) and beside the reports, where the API hands them out (``runs/<run-id>/reports/``),
    with ``export.json`` in both; the artifact then serves with ``engine`` where its format was kept."""
    from trainlib.artifact import write_json
    from trainlib.transforms import eval_transform

    norm = meta["normalization"]
    transform = eval_transform(meta["image_size"], norm["mean"], norm["std"], meta["resize_size"])
    images = parity_images(samples, transform)
    report = export(model, meta["calibration"]["temperature"], images, model_dir, split)
    report["serving_engine"] = use_engine(model_dir, meta, report, engine)
    for name, entry in report["formats"].items():
        if entry["kept"]:
            shutil.copy2(model_dir / FILES[name], report_dir / FILES[name])
    write_json(model_dir / "export.json", report)
    write_json(report_dir / "export.json", report)
    print(line(report), flush=True)
    return report


def line(report: dict) -> str:
    """The job log's line: ``export: onnx kept (max difference 3.1e-07), torchscript kept (...)``."""
    parts = []
    for name, entry in report["formats"].items():
        if entry["kept"]:
            parts.append(f"{name} kept (max difference {entry['max_abs_difference']:.1e})")
        else:
            parts.append(f"{name} left out ({entry['reason']})")
    return "export: " + ", ".join(parts)


def use_engine(model_dir: Path, meta: dict, report: dict, engine: str) -> dict:
    """Serve the artifact with ``engine``: ONNX Runtime only where ``model.onnx`` was kept (its answers are
    PyTorch's, checked above); it goes in ``model.json`` (``serving_engine``) and ONNX Runtime in the
    requirements the container installs. What was chosen, and why, goes in ``export.json``."""
    from trainlib.artifact import write_json

    if engine != "onnxruntime":
        return {"engine": "torch"}
    onnx = report["formats"].get("onnx") or {}
    if not onnx.get("kept"):
        return {
            "engine": "torch",
            "reason": f"onnxruntime asked for, but model.onnx was left out: {onnx.get('reason')}",
        }
    meta["serving_engine"] = "onnxruntime"
    write_json(
        model_dir / "model.json", {**json.loads((model_dir / "model.json").read_text()), "serving_engine": engine}
    )
    requirements = model_dir / "code" / "requirements.txt"
    requirements.write_text(requirements.read_text() + ONNXRUNTIME + "\n")
    return {"engine": "onnxruntime", "requirement": ONNXRUNTIME}
