"""The model artifact (ARCHITECTURE.md, "Model artifact"): what SageMaker tars into ``model.tar.gz``.

``model.pth`` (state_dict), ``model.json`` (everything needed to rebuild the model and read its
outputs), and ``code/`` with ``inference.py``, the modules it imports and a ``requirements.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1
TRAINING_DIR = Path(__file__).resolve().parent.parent
# The PyTorch inference container already has torch, torchvision and Pillow; an endpoint in a VPC
# without internet access cannot pip-install anything, so nothing more is asked for.
INFERENCE_REQUIREMENTS = (
    "# The SageMaker PyTorch inference container provides torch, torchvision and Pillow,\n"
    "# which is all inference.py needs.\n"
)


def write_model_dir(model_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    torch.save(state, model_dir / "model.pth")
    write_json(model_dir / "model.json", {"format_version": FORMAT_VERSION, **metadata})
    copy_inference_code(model_dir / "code")


def copy_inference_code(code_dir: Path) -> None:
    if code_dir.exists():
        shutil.rmtree(code_dir)
    code_dir.mkdir(parents=True)
    shutil.copy2(TRAINING_DIR / "inference.py", code_dir / "inference.py")
    shutil.copytree(
        TRAINING_DIR / "trainlib", code_dir / "trainlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (code_dir / "requirements.txt").write_text(INFERENCE_REQUIREMENTS)


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
