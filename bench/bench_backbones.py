"""Backbones on this machine: images a second for each ``--arch`` in head mode (the frozen backbone's one
forward pass) and full mode (a training step), at the weights' own input size, ResNet-50 the reference.

The ratios are what ``chalice_app/cost.py``'s ``ARCH_COST`` carries: the cost forecast's throughput rows
are ResNet-50's, and another backbone's time is its row divided by that backbone's measured speed
relative to ResNet-50 here (a CPU's ratio; a GPU's may differ, and the forecast says so).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common import Row, table, timings, write

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))

BATCH = 8
ARCHS = ("resnet18", "resnet34", "resnet50", "convnext_tiny", "efficientnet_v2_s", "regnet_y_1_6gf", "vit_b_16")


def _rates(arch: str) -> tuple[float, float]:
    """(head, full) images a second, batches of ``BATCH`` at the weights' crop size."""
    import torch

    from trainlib import models

    model = models.build_model(arch, 10)
    size = models.ARCHS[arch].preprocessing()[0]
    images, targets = torch.randn(BATCH, 3, size, size), torch.randint(0, 10, (BATCH,))
    backbone = models.backbone_of(model, arch).eval()

    def head():
        with torch.no_grad():
            backbone(images)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = torch.nn.CrossEntropyLoss()

    def full():
        model.train()
        optimizer.zero_grad()
        loss(model(images), targets).backward()
        optimizer.step()

    return (
        BATCH / statistics.median(timings(head, repeats=3)),
        BATCH / statistics.median(timings(full, repeats=3)),
    )


def run() -> list[Row]:
    rates = {arch: _rates(arch) for arch in ARCHS}
    reference = rates["resnet50"]
    rows = []
    for arch in ARCHS:
        for index, mode in enumerate(("head", "full")):
            rows.append(
                Row(
                    f"{arch} {mode} mode, images/s at its own input size (CPU, batches of {BATCH})",
                    rates[arch][index],
                    reference[index],
                    "resnet50",
                    "images/s",
                    note=f"speed relative to resnet50: {rates[arch][index] / reference[index]:.2f}",
                )
            )
    return rows


if __name__ == "__main__":
    print(table(json.loads(write(run(), "backbones").read_text())))
