"""The model artifact (docs/architecture.md, "Model artifact and serving"): what SageMaker tars into ``model.tar.gz``.

At the root, as AWS's Ray Serve inference container reads it from ``/opt/ml/model/``:

* ``config.yaml``: the Ray Serve application (``serve_app:app`` on ``/``), with the deployment's
  ``ray_actor_options`` (``num_gpus`` 1 for a GPU instance type, else 0);
* ``serve_app.py`` and the ``trainlib`` modules it imports, importable from the root;
* ``model.pth`` (state dict) and ``model.json`` (everything needed to rebuild the model and read
  its outputs);
* ``code/requirements.txt``: what the Ray Serve image lacks (nothing: it has torch, torchvision
  and Pillow), which the container installs before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from trainlib.datasets import Splits
from trainlib.models import ARCHS
from trainlib.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMAT_VERSION = 2
TRAINING_DIR = Path(__file__).resolve().parent.parent
SERVE_MODULE = "serve_app"
DEPLOYMENT = "ImageClassifier"
# What serve_app.py imports from trainlib (tests/training check the archive imports with nothing else).
SERVING_MODULES = (
    "__init__.py",
    "errors.py",
    "models.py",
    "transforms.py",
    "predictor.py",
    "calibration.py",
    "explain.py",
)
SERVING_REQUIREMENTS = (
    "# Installed by the Ray Serve inference container before Ray starts. It already has torch,\n"
    "# torchvision and Pillow, which is all serve_app.py needs; an endpoint in a VPC without\n"
    "# internet access could not install anything more.\n"
)


def serve_config(num_gpus: int) -> str:
    """``config.yaml``: Ray Serve's ``applications:`` config, as ``serve run`` and the container read it."""
    return (
        "# Ray Serve application config: AWS's Ray Serve inference container deploys it from\n"
        "# /opt/ml/model/config.yaml; droptrain's local runtime deploys it the same way.\n"
        "applications:\n"
        "  - name: droptrain\n"
        "    route_prefix: /\n"
        f"    import_path: {SERVE_MODULE}:app\n"
        "    deployments:\n"
        f"      - name: {DEPLOYMENT}\n"
        "        ray_actor_options:\n"
        f"          num_gpus: {int(num_gpus)}\n"
    )


def write_model_dir(model_dir: Path, model: nn.Module, metadata: dict[str, Any], num_gpus: int = 0) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.cpu()
        for k, v in model.state_dict().items()
    }
    torch.save(state, model_dir / "model.pth")
    write_json(model_dir / "model.json", {"format_version": FORMAT_VERSION, **metadata})
    copy_serving_code(model_dir, num_gpus)


def copy_serving_code(model_dir: Path, num_gpus: int = 0) -> None:
    """The application, its modules, its config and its requirements, at the artifact's root."""
    shutil.copy2(TRAINING_DIR / f"{SERVE_MODULE}.py", model_dir / f"{SERVE_MODULE}.py")
    package = model_dir / "trainlib"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir()
    for name in SERVING_MODULES:
        shutil.copy2(TRAINING_DIR / "trainlib" / name, package / name)
    (model_dir / "config.yaml").write_text(serve_config(num_gpus))
    (model_dir / "code").mkdir(exist_ok=True)
    (model_dir / "code" / "requirements.txt").write_text(SERVING_REQUIREMENTS)


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def model_metadata(
    args: argparse.Namespace,
    hyperparameters: dict,
    splits: Splits,
    metrics: dict,
    history: list[dict],
    decode_skipped: int,
) -> dict:
    """``model.json``: everything needed to rebuild the model and read its outputs."""
    resize = ARCHS[args.arch].preprocessing(args.image_size)[1]
    return {
        "run_id": args.run_id,
        "arch": args.arch,
        "num_classes": len(splits.classes),
        "classes": splits.classes,
        "image_size": args.image_size,
        "resize_size": resize,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        # How an image becomes the network's input, for whoever runs model.onnx or model.pt elsewhere.
        "preprocessing": {
            "channels": "RGB",
            "layout": "NCHW float32",
            "resize": f"shorter side to {resize}, bilinear, antialiased",
            "crop": f"centre {args.image_size}x{args.image_size}",
            "scale": "pixel / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "metrics": metrics,
        "hyperparameters": hyperparameters,
        "dataset": {
            "layout": splits.layout,
            "carved": splits.carved,
            "train": len(splits.train),
            "valid": len(splits.valid),
            "test": len(splits.test),
            "skipped_images": len(splits.unreadable) + decode_skipped,
        },
        "training_seconds": round(sum(h["seconds"] for h in history), 3),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "framework": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
