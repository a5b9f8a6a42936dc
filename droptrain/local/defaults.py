"""What ``droptrain up`` trains by default, decided once at start by what this machine has.

* ImageNet weights for the architecture in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), or
  downloadable once (with a progress bar, then used offline): transfer learning, at 224 px in head
  mode (the frozen backbone's features computed once, shared by a tuning job's trials).
* Otherwise: from scratch at 64 px, said plainly once, with how to get the weights.
* A CUDA GPU: ResNet-50 as on SageMaker; on the CPU, ResNet-18.

What the user sets (``STATIC_HYPERPARAMETERS``, ``TUNING_RANGES``) is never overridden; a ``weights``
the user chose is not second-guessed. ``droptrain demo`` keeps its own fast, offline settings.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# From scratch: small images, the whole network trained; ranges for that.
SCRATCH = {"arch": "resnet18", "weights": "none", "train-mode": "full", "image-size": "64", "optimizer": "adamw"}
SCRATCH_RANGES = {"lr": [0.001, 0.02], "weight-decay": [0.00001, 0.001], "epochs": [3, 8], "batch-size": [16, 32]}
# Transfer learning: the ImageNet backbone frozen, a new head trained on its features.
# No image-size: each architecture at its ImageNet weights' own (224; 384 for efficientnet_v2_s).
TRANSFER = {"weights": "imagenet", "train-mode": "head", "optimizer": "adamw"}
TRANSFER_RANGES = {"lr": [0.0005, 0.01], "weight-decay": [0.00001, 0.001], "epochs": [3, 8], "batch-size": [16, 32]}
DOWNLOAD_SECONDS = 15  # to connect; a machine without network learns it quickly


class WeightsDownloadError(Exception):
    pass


@dataclass
class Situation:
    hyperparameters: dict[str, str]
    ranges: dict[str, list] | None
    message: str
    notes: list[str] = field(default_factory=list)
    parallel: int = 1  # trials at once: one per GPU, or up to four sharing the cores


def parallel_trials(gpus: int, cores: int | None = None) -> int:
    """One trial per GPU; on the CPU as many as cores (each on its share of them), at most four:
    small trials spend much of their time in one thread (starting, loading, writing)."""
    return gpus if gpus else max(1, min(4, cores or os.cpu_count() or 1))


def _scratch(arch: str) -> dict[str, str]:
    """From scratch at 64 px, but ViT-B/16, whose position embeddings take 224 px only."""
    return {k: v for k, v in SCRATCH.items() if not (k == "image-size" and arch.startswith("vit"))}


def weights_url(arch: str) -> str:
    """The file train.py loads for ``--weights imagenet`` (torchvision's default weights of ``arch``)."""
    from torchvision import models  # deferred: `droptrain config` must not wait seconds for torch

    return models.get_model_weights(arch).DEFAULT.url


def cache_path(url: str) -> Path:
    import torch  # deferred, as above

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def gpu_count() -> int:
    """CUDA GPUs the jobs can use: those ``CUDA_VISIBLE_DEVICES`` names, else what ``nvidia-smi`` lists
    (without importing torch into the runtime, or starting CUDA in it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def download(url: str, target: Path, out=None, timeout: float = DOWNLOAD_SECONDS) -> None:
    """``url`` to ``target`` through a temporary file, with a progress bar on a terminal (a line at
    the start and the end otherwise), checked against the hash prefix in torchvision's file names."""
    out = out or sys.stderr
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = re.search(r"-([a-f0-9]{8,})\.", target.name)
    digest, partial = hashlib.sha256(), None
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,
            tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
        ):
            partial = Path(tmp.name)
            total, done, tty = int(response.headers.get("Content-Length") or 0), 0, out.isatty()
            print(f"downloading {url} ({total / 1e6:.0f} MB) to {target}", file=out, flush=True)
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if tty and total:
                    bar = "#" * int(30 * done / total)
                    print(f"\r  [{bar:<30}] {done / 1e6:.0f}/{total / 1e6:.0f} MB", end="", file=out, flush=True)
            if tty:
                print(file=out)
    except (urllib.error.URLError, OSError) as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)  # a download cut short leaves nothing behind
        raise WeightsDownloadError(str(getattr(exc, "reason", None) or exc)) from None
    if expected and not digest.hexdigest().startswith(expected.group(1)):
        partial.unlink(missing_ok=True)
        raise WeightsDownloadError(f"the file downloaded from {url} does not match its hash {expected.group(1)}")
    shutil.move(partial, target)
    print(f"downloaded {target.name}: used offline from now on", file=out, flush=True)


def choose(
    user_static: dict[str, str],
    user_ranges: bool,
    fetch: Callable[[str, Path], None] = download,
    gpus: int | None = None,
) -> Situation:
    """The defaults for this machine, under what the user set (``user_static`` keys win)."""
    gpus = gpu_count() if gpus is None else gpus
    arch = user_static.get("arch") or ("resnet50" if gpus else "resnet18")
    situation = _weights(user_static, user_ranges, fetch, arch)
    situation.parallel = parallel_trials(gpus)
    if gpus:
        situation.notes.append(f"{gpus} CUDA GPU(s): jobs train on the GPU with mixed precision, one job per GPU")
    return situation


def _weights(
    user_static: dict[str, str], user_ranges: bool, fetch: Callable[[str, Path], None], arch: str
) -> Situation:
    if user_static.get("weights"):
        imagenet = user_static["weights"] == "imagenet"
        return Situation(
            {**(TRANSFER if imagenet else _scratch(arch)), "arch": arch, **user_static},
            None if user_ranges else (TRANSFER_RANGES if imagenet else SCRATCH_RANGES),
            f"training with the weights you chose ({user_static['weights']}), {arch}",
        )
    try:
        url = weights_url(arch)
    except (ValueError, KeyError):  # train.py refuses it by name when the first job starts
        return Situation(
            {**SCRATCH, **user_static},
            None if user_ranges else SCRATCH_RANGES,
            f"no ImageNet weights known for arch {arch!r}: from scratch",
        )
    path = cache_path(url)
    found = path.is_file()
    if not found:
        try:
            fetch(url, path)
            found = True
        except WeightsDownloadError as exc:
            reason = exc
    if found:
        return Situation(
            {**TRANSFER, "arch": arch, **user_static},
            None if user_ranges else TRANSFER_RANGES,
            f"transfer learning: {arch} with ImageNet weights ({path}), at their input size, head mode",
        )
    return Situation(
        {**_scratch(arch), "arch": arch, **user_static},
        None if user_ranges else SCRATCH_RANGES,
        f"no ImageNet weights for {arch}: not in the torch cache ({path}) and not downloadable ({reason}). "
        f"Training from scratch at 64 px, which needs far more images for a good model. To fine-tune "
        f"instead, put {os.path.basename(url)} in {path.parent} (or set TORCH_HOME) and start again.",
    )
