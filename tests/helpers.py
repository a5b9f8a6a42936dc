"""Helpers the tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_DIR = ROOT / "training"

# Small enough to train in seconds on two CPU cores, large enough to be far above chance.
TINY = {"classes": 4, "per_class": 30, "size": 48, "seed": 3}
FAST_HYPERPARAMETERS = {
    "arch": "resnet18", "weights": "none", "train-mode": "full", "image-size": "48",
    "epochs": "4", "batch-size": "16", "lr": "0.002", "optimizer": "adamw", "weight-decay": "0.0001",
}


def run_train(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in the source dir, as the container runs it."""
    return subprocess.run(
        [sys.executable, str(TRAINING_DIR / "train.py"), *args],
        cwd=TRAINING_DIR,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def png_bytes(image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest
