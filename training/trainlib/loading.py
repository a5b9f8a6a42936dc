"""Batches for the training loop: decoded images, or cached features of a frozen backbone.

Every batch is ``(inputs, targets, skipped)``: ``skipped`` counts images that failed to decode in
that batch (counted in the main process, whichever worker met them), and ``inputs`` is ``None``
when every image of a batch failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from trainlib.distributed import ALONE, World
from trainlib.transforms import open_image

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor | None, torch.Tensor | None, int]
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageDataset(Dataset):
    """``(path, class index)`` samples decoded and transformed on access; ``None`` when unreadable."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = open_image(path)
        except _DECODE_ERRORS as exc:
            log.warning("skipping undecodable image %s: %s", path, exc)
            return None
        return self.transform(image), target


def collate_skipping(batch: list) -> Batch:
    good = [item for item in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([image for image, _ in good])
    targets = torch.tensor([target for _, target in good], dtype=torch.long)
    return images, targets, skipped


def image_loader(
    samples: Sequence[tuple[Path, int]],
    transform: Callable,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool,
    seed: int,
    world: World = ALONE,
    draw: torch.Tensor | None = None,
) -> DataLoader:
    """Batches of ``samples``; shuffled for training, and then, with several processes, each process's
    share of them (``DistributedSampler``: its ``set_epoch`` reshuffles them each epoch). ``draw``: each
    sample's chance, drawn with replacement (balanced batches, one process)."""
    generator = torch.Generator().manual_seed(seed)
    dataset = ImageDataset(samples, transform)
    sampler: Any = (
        DistributedSampler(dataset, world.size, world.rank, seed=seed) if shuffle and world.distributed else None
    )
    if shuffle and draw is not None and sampler is None:
        sampler = WeightedRandomSampler(draw, len(draw), replacement=True, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate_skipping,
        generator=generator,
    )


@dataclass
class FeatureSet:
    """A frozen backbone's features for one split, computed once and reused every epoch."""

    features: torch.Tensor
    targets: torch.Tensor
    skipped: int

    def batches(
        self,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        world: World = ALONE,
        draw: torch.Tensor | None = None,
    ) -> Iterator[Batch]:
        """Batches in a shuffled order (the same on every process: the generators are seeded alike), of
        which each process takes its share; with ``draw`` (each feature's chance), drawn with replacement."""
        n = len(self.targets)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if shuffle and draw is not None:
            order = torch.multinomial(draw, n, replacement=True, generator=generator)
        order = order[world.rank :: world.size]
        n = len(order)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size].to(self.features.device)
            yield self.features[index], self.targets[index], 0


@torch.no_grad()  # not inference_mode: the head trains on these tensors
def extract_features(backbone: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> FeatureSet:
    """Run ``backbone`` once over ``loader``; features stay on ``device`` (they are small)."""
    backbone.eval()
    features, targets, skipped = [], [], 0
    for images, labels, n_skipped in loader:
        skipped += n_skipped
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=amp):
            out = backbone(images)
        features.append(out.float())
        targets.append(labels.to(device, non_blocking=True))
    if not features:
        return FeatureSet(torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device), skipped)
    return FeatureSet(torch.cat(features), torch.cat(targets), skipped)
