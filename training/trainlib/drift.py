"""Drift: are the images an endpoint sees still like the ones its model was trained on?

The final job keeps a reference in the artifact (``drift_reference.pt``): the penultimate-layer embeddings
(the backbone's pooled features, what the head reads) of up to ``REFERENCE_IMAGES`` training images, and
the model's predicted-label distribution on them. A check embeds the captured images with the same model
and compares the two samples:

* **inputs**: the maximum mean discrepancy (MMD², the unbiased estimate) with a Gaussian kernel whose width is
  the median distance between the pooled embeddings, its p-value by permutation (``PERMUTATIONS`` random
  relabellings of the pooled sample). One test over the whole embedding, correlations included, with no
  assumption about its distribution; a per-dimension test (KS on each of 512 features) needs a correction
  for 512 tests that leaves it blind to a shift spread thinly over many features. A permutation test's
  false-alarm rate is at most its level by construction; ``tests/training/test_drift_statistics.py`` measures it on
  same-distribution samples, and ``make bench`` on real embeddings.
* **labels**: the total variation distance between the predicted-label distributions, and the labels
  whose share moved most (a new class, a season, a camera that sees one class more).

Each side is subsampled to ``MAX_SAMPLE`` (the kernel is quadratic in it); under ``MIN_SAMPLE`` captured
images the check says "not enough data" rather than guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

REFERENCE_FILE = "drift_reference.pt"
REFERENCE_IMAGES = 1000
MAX_SAMPLE = 1000
MIN_SAMPLE = 50
PERMUTATIONS = 200
ALPHA = 0.01  # the level: a same-distribution sample is called drift about 1 time in 100 checks
MOST_SHIFTED = 3


@torch.no_grad()
def embed(
    backbone: nn.Module, batches: Sequence[torch.Tensor] | Any, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The backbone's pooled features of every image in ``batches`` (preprocessed tensors), float32 on the CPU."""
    backbone.eval()
    out = [backbone(batch.to(device)).flatten(1).float().cpu() for batch in batches]
    return torch.cat(out) if out else torch.empty(0)


def reference(embeddings: torch.Tensor, predicted: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """What the artifact keeps: a random ``REFERENCE_IMAGES`` of the embeddings (float16) and the label shares."""
    keep = _subsample(embeddings.shape[0], REFERENCE_IMAGES, seed=0)
    counts = torch.bincount(predicted.long(), minlength=len(classes)).tolist()
    return {"embeddings": embeddings[keep].half(), "label_counts": counts, "classes": list(classes)}


@torch.no_grad()
def reference_step(model: nn.Module, meta: dict, samples: Sequence[tuple[Path, int]], model_dir: Path) -> dict:
    """The final job's: the reference of up to ``REFERENCE_IMAGES`` of the training split's images, preprocessed
    as serving preprocesses them, in the artifact; a line for the job's log."""
    from trainlib.models import backbone_of, head_of
    from trainlib.transforms import eval_transform, open_image

    norm, arch = meta["normalization"], meta["arch"]
    transform = eval_transform(meta["image_size"], norm["mean"], norm["std"], meta["resize_size"])
    picked = [samples[int(i)][0] for i in _subsample(len(samples), REFERENCE_IMAGES, seed=0)]
    device = next(model.parameters()).device
    tensors = []
    for path in picked:
        try:
            tensors.append(transform(open_image(path)))
        except (OSError, ValueError):
            continue  # an undecodable image was skipped by training too
    model.eval()
    features = embed(backbone_of(model, arch), torch.stack(tensors).split(64), device) if tensors else torch.empty(0)
    predicted = head_of(model, arch)(features.to(device)).argmax(1).cpu() if tensors else torch.empty(0)
    data = reference(features, predicted, meta["classes"])
    save_reference(model_dir, data)
    line = f"drift reference: {data['embeddings'].shape[0]} training images, {data['embeddings'].shape[-1]} features"
    print(line, flush=True)
    return data


def save_reference(model_dir: Path, data: dict[str, Any]) -> None:
    torch.save(data, model_dir / REFERENCE_FILE)


def load_reference(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / REFERENCE_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _subsample(n: int, limit: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:limit] if n > limit else torch.arange(n)


def mmd_test(
    first: torch.Tensor, second: torch.Tensor, permutations: int = PERMUTATIONS, seed: int = 0
) -> tuple[float, float]:
    """(MMD², p-value) of the two samples of row vectors; the kernel's width is their pooled median distance."""
    x = first[_subsample(first.shape[0], MAX_SAMPLE, seed)].double()
    y = second[_subsample(second.shape[0], MAX_SAMPLE, seed + 1)].double()
    pooled = torch.cat([x, y])
    distances = torch.cdist(pooled, pooled).pow(2)
    upper = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    width = float(upper.median()) or 1.0
    kernel = torch.exp(-distances / width)
    generator = torch.Generator().manual_seed(seed)
    total, n = pooled.shape[0], x.shape[0]
    # Column 0: the samples as they are; then each permutation, as 0/1 membership of the first sample.
    orders = [torch.arange(total)] + [torch.randperm(total, generator=generator) for _ in range(permutations)]
    members = torch.zeros(total, len(orders), dtype=torch.float64)
    for column, order in enumerate(orders):
        members[order[:n], column] = 1.0
    values = _mmd2(kernel, members, n)
    observed = float(values[0])
    return observed, (int((values[1:] >= values[0]).sum()) + 1) / (permutations + 1)


def _mmd2(kernel: torch.Tensor, members: torch.Tensor, n: int) -> torch.Tensor:
    """The unbiased MMD² of each column's split (1: the first sample, of ``n``; 0: the second), all at once:
    sums of the kernel over a split are quadratic forms, and its diagonal is 1 (a Gaussian kernel)."""
    m = members.shape[0] - n
    others = 1.0 - members
    spread = kernel @ members
    within_x = ((members * spread).sum(0) - n) / (n * (n - 1))
    within_y = ((others * (kernel @ others)).sum(0) - m) / (m * (m - 1))
    across = (others * spread).sum(0) / (n * m)
    return within_x + within_y - 2 * across


def label_shift(reference_counts: Sequence[int], counts: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """The total variation distance between the two label distributions and the labels that moved most."""
    ref = torch.tensor(reference_counts, dtype=torch.float64)
    now = torch.tensor(counts, dtype=torch.float64)
    ref, now = ref / max(ref.sum(), 1.0), now / max(now.sum(), 1.0)
    moved = (now - ref).tolist()
    order = sorted(range(len(classes)), key=lambda i: -abs(moved[i]))[:MOST_SHIFTED]
    return {
        "distance": round(float((now - ref).abs().sum() / 2), 4),
        "most_shifted": [
            {"label": classes[i], "reference_share": round(float(ref[i]), 4), "share": round(float(now[i]), 4)}
            for i in order
            if moved[i] != 0
        ],
    }


def check(
    reference_data: dict[str, Any], embeddings: torch.Tensor, predicted: torch.Tensor, alpha: float = ALPHA
) -> dict:
    """The verdict on the captured images' ``embeddings`` and predicted labels against the reference."""
    size = int(embeddings.shape[0])
    classes = reference_data["classes"]
    if size < MIN_SAMPLE:
        return {"status": "not_enough_data", "sample_size": size, "minimum": MIN_SAMPLE}
    statistic, p_value = mmd_test(reference_data["embeddings"].float(), embeddings)
    counts = torch.bincount(predicted.long(), minlength=len(classes)).tolist()
    return {
        "status": "drift" if p_value < alpha else "no_drift",
        "sample_size": size,
        "test": "mmd-permutation",
        "statistic": round(statistic, 6),
        "p_value": round(p_value, 4),
        "alpha": alpha,
        "permutations": PERMUTATIONS,
        "labels": label_shift(reference_data["label_counts"], counts, classes),
    }
