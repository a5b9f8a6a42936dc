"""``droptrain demo``: dataset → training under the SageMaker contract → a prediction.

This is the first, single-job version of the demo: it makes (or takes) a dataset, trains it with
``training/train.py`` exactly as a SageMaker training job would run it, packs ``model.tar.gz``,
unpacks it as an endpoint does, and predicts a test image through ``inference.py``'s handlers.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

from droptrain.container import JobPaths, failure_reason, package_model, run_training
from droptrain.synthetic import make_dataset

DEMO_HYPERPARAMETERS = {
    # Small and fast on two CPU cores; no ImageNet weights, which cannot be downloaded everywhere.
    "arch": "resnet18",
    "weights": "none",
    "train-mode": "full",
    "image-size": "64",
    "epochs": "4",
    "batch-size": "16",
    "lr": "0.002",
    "optimizer": "adamw",
    "weight-decay": "0.0001",
}


class DemoError(Exception):
    pass


def load_inference_module(code_dir: Path) -> ModuleType:
    """Import ``inference.py`` from an unpacked model's ``code/``, as the inference container does.

    The model's own ``trainlib`` is what it imports; the caller's import state is restored after,
    so loading a model never swaps modules under the rest of the process.
    """
    def ours(name: str) -> bool:
        return name == "trainlib" or name.startswith("trainlib.")

    saved = {name: sys.modules.pop(name) for name in [m for m in sys.modules if ours(m)]}
    sys.path.insert(0, str(code_dir))
    try:
        spec = importlib.util.spec_from_file_location(f"droptrain_model_{id(code_dir):x}", code_dir / "inference.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(code_dir))
        for name in [m for m in sys.modules if ours(m)]:
            del sys.modules[name]
        sys.modules.update(saved)


def run_demo(workdir: Path, data: Path | None, hyperparameters: dict[str, str], say: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    if data is None:
        data = workdir / "dataset"
        if data.exists():
            shutil.rmtree(data)
        say(f"making a synthetic dataset in {data}")
        summary = make_dataset(data, classes=4, per_class=40, size=64, seed=0)
        say(f"  {len(summary['classes'])} classes: {', '.join(summary['classes'])}")
    job = JobPaths(workdir / "jobs" / "demo-final")
    if job.root.exists():
        shutil.rmtree(job.root)
    say(f"training (SageMaker contract, job folder {job.root})")
    status = run_training(job, {"training": data}, hyperparameters, job_name="demo-final", on_line=lambda l: say("  " + l))
    if status != 0:
        raise DemoError(f"training failed: {failure_reason(job, f'exit status {status}')}")
    archive = package_model(job.model, job.output / "model.tar.gz")
    say(f"model artifact: {archive}")

    endpoint_dir = workdir / "endpoint"
    if endpoint_dir.exists():
        shutil.rmtree(endpoint_dir)
    with tarfile.open(archive) as tar:
        tar.extractall(endpoint_dir, filter="data")
    inference = load_inference_module(endpoint_dir / "code")
    model = inference.model_fn(str(endpoint_dir))
    test_images = sorted((data / "test").rglob("*.jpg")) or sorted(data.rglob("*.jpg"))
    image = random.Random(0).choice(test_images)
    body, _ = inference.output_fn(
        inference.predict_fn(inference.input_fn(image.read_bytes(), "image/jpeg"), model), "application/json; top_k=3"
    )
    say(f"prediction for {image.relative_to(data)} (true class {image.parent.name}):")
    say(f"  {body}")
    say(f"done in {time.perf_counter() - started:.0f}s")
    return {"archive": str(archive), "image": str(image), "prediction": body}
