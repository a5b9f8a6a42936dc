"""Training throughput: train.py against the bare model's ceiling and the course projects' approach.

* ceiling: ResNet-18 forward (head mode) or forward+backward+step (full) on tensors already in
  memory, same batch size and threads, on the device train.py uses (a GPU with mixed precision and
  channels-last, as train.py trains there); measured just before and just after ours, averaged.
* course approach: ImageFolder, PIL decode and transforms every epoch, default DataLoader, a backbone
  frozen with requires_grad=False but run forward on every image in every epoch; written plainly.
* ours: train.py on the same images; head mode computes frozen features once (first epoch), then
  trains the head on them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Row
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32
# Where train.py trains: the GPU when there is one (mixed precision, channels-last), else the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _images_per_second(fn, images: int, repeats: int = 3) -> float:
    fn()  # warm-up
    best = []
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        fn()
        _sync()
        best.append(images / (time.perf_counter() - started))
    return sorted(best)[len(best) // 2]


def ceiling(size: int, mode: str, batches: int = 4) -> float:
    from torchvision.models import resnet18

    cuda = DEVICE.type == "cuda"
    model = resnet18(num_classes=4).to(DEVICE, memory_format=torch.channels_last if cuda else torch.preserve_format)
    data = [torch.randn(BATCH, 3, size, size, device=DEVICE) for _ in range(batches)]
    labels = torch.randint(0, 4, (BATCH,), device=DEVICE)
    if mode == "head":
        model.eval()

        def run():
            with torch.inference_mode(), torch.autocast(DEVICE.type, enabled=cuda):
                for x in data:
                    model(x)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()

        scaler = torch.amp.GradScaler(DEVICE.type, enabled=cuda)

        def run():
            for x in data:
                optimizer.zero_grad()
                with torch.autocast(DEVICE.type, enabled=cuda):
                    loss = loss_fn(model(x), labels)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

    return _images_per_second(run, BATCH * batches)


def around(measure, size: int, mode: str) -> tuple[dict, float]:
    """``measure()`` and the ceiling as the mean of one taken just before and one just after it: this
    machine's speed drifts over minutes, and a ceiling from another time window would measure that."""
    before = ceiling(size, mode)
    result = measure()
    return result, (before + ceiling(size, mode)) / 2


def course_approach(data: Path, size: int, epochs: int = 2) -> float:
    """Per-epoch images/s of the common notebook loop: decode and transform every epoch,
    frozen backbone still run forward on every image."""
    from torchvision import datasets, models, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(int(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = datasets.ImageFolder(str(data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model = models.resnet18(weights=None)
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, len(dataset.classes))
    model.to(DEVICE)
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.to(DEVICE), y.to(DEVICE)
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        _sync()
        rates.append(len(dataset) / (time.perf_counter() - started))
    return sorted(rates)[len(rates) // 2]


def ours(data: Path, size: int, mode: str, epochs: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "training" / "train.py"),
                "--data-dir",
                str(data),
                "--model-dir",
                f"{tmp}/m",
                "--output-data-dir",
                f"{tmp}/o",
                "--no-checkpoints",
                "--weights",
                "none",
                "--train-mode",
                mode,
                "--image-size",
                str(size),
                "--epochs",
                str(epochs),
                "--batch-size",
                str(BATCH),
                # On the CPU, loader processes would take the model's cores; on a GPU machine train.py picks.
                *(["--workers", "0"] if DEVICE.type == "cpu" else []),
            ],
            cwd=ROOT / "training",
            capture_output=True,
            text=True,
            check=True,
        )
        history = json.loads(Path(tmp, "o", "history.json").read_text())
    rates = [h["images"] / h["seconds"] for h in history]
    result = {
        "later_epochs": sorted(rates[1:])[len(rates[1:]) // 2] if len(rates) > 1 else rates[0],
        "first_epoch": rates[0],
    }
    features = re.search(r"computed frozen features for (\d+) images in ([0-9.]+)s", out.stderr)
    if features:  # head mode: the backbone's one pass over every image, the part the ceiling bounds
        result["features"] = int(features.group(1)) / max(float(features.group(2)), 1e-6)
    return result


def run() -> list[Row]:
    from droptrain.synthetic import make_dataset

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, per_class in ((64, 300), (224, 100)):
            data = Path(tmp) / f"d{size}"
            make_dataset(data, classes=4, per_class=per_class, size=size, seed=0)
            head, head_ceiling = around(lambda data=data, size=size: ours(data, size, "head"), size, "head")
            full, full_ceiling = around(lambda data=data, size=size: ours(data, size, "full", epochs=2), size, "full")
            course = course_approach(data, size)
            rows += [
                Row(
                    f"head mode, {size} px: frozen features (one pass)",
                    head["features"],
                    head_ceiling,
                    "bare forward, tensors in memory",
                    "img/s",
                    target=">= 0.8 of ceiling",
                    note="decode + resize + forward, once per image",
                ),
                Row(
                    f"head mode, {size} px: epochs after the first",
                    head["later_epochs"],
                    head_ceiling,
                    "bare forward, tensors in memory",
                    "img/s",
                    target="far above the first",
                ),
                Row(
                    f"head mode, {size} px: epochs after the first",
                    head["later_epochs"],
                    course,
                    "course approach, per epoch",
                    "img/s",
                ),
                Row(
                    f"full mode, {size} px: epochs",
                    full["later_epochs"],
                    full_ceiling,
                    "bare forward+backward+step",
                    "img/s",
                ),
            ]
    return rows


if __name__ == "__main__":
    from common import table, write

    print(table(json.loads(write(run(), "training").read_text())))
