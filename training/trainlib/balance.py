"""Imbalanced classes: which remedy a run takes (``--class-balance``), and what it changes.

``weights`` weighs each class's loss by its inverse frequency (``N / (K · n_c)``: a balanced dataset's
weights are all 1), so every class counts alike in each step's gradient whatever its size; it works
in every mode (decoded images or cached features, one process or several). ``sampler`` draws the
training batches with replacement in proportion to ``1 / n_c``, so each class fills about the same
share of every epoch; with several processes it gives way to ``weights`` (each process draws its
share of one shuffle). ``auto`` takes ``weights`` when the largest training class is
``IMBALANCED_RATIO`` times the smallest or more, as the orchestrator's ``OBJECTIVE=auto`` turns to
balanced accuracy (docs/performance.md measures both remedies).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainlib.distributed import World

IMBALANCED_RATIO = 3.0
CHOICES = ("auto", "weights", "sampler", "off")


@dataclass(frozen=True)
class Remedy:
    mode: str  # "weights", "sampler" or "off"
    counts: tuple[int, ...]  # training images per class, in class order
    why: str

    @classmethod
    def of(cls, asked: str, train: Sequence[tuple[Path, int]], classes: int, world: World) -> Remedy:
        found = Counter(target for _, target in train)
        counts = tuple(found.get(c, 0) for c in range(classes))
        present = [n for n in counts if n]
        ratio = max(present) / min(present) if present else 1.0
        mode, why = asked, f"imbalance ratio {ratio:.1f}"
        if asked == "auto":
            mode = "weights" if ratio >= IMBALANCED_RATIO else "off"
            why += f", {'at or above' if mode == 'weights' else 'below'} {IMBALANCED_RATIO:g}"
        if mode == "sampler" and world.distributed:
            mode, why = "weights", why + "; several processes draw one shuffle, so the loss is weighted instead"
        return cls(mode, counts, why)

    def criterion(self, device: torch.device, label_smoothing: float = 0.0) -> nn.Module:
        """The loss: under ``weights``, weighted by inverse class frequency while training; with
        ``label_smoothing``, smoothed while training."""
        if self.mode != "weights" and not label_smoothing:
            return nn.CrossEntropyLoss()
        weights = None
        if self.mode == "weights":
            total, present = sum(self.counts), sum(1 for n in self.counts if n)
            weights = torch.tensor([total / (present * n) if n else 1.0 for n in self.counts], dtype=torch.float32)
        return ClassWeightedLoss(weights, label_smoothing).to(device)

    def draw(self, targets: Sequence[int]) -> torch.Tensor | None:
        """Each training sample's chance to be drawn under ``sampler`` (``None``: a plain shuffle)."""
        if self.mode != "sampler":
            return None
        return torch.tensor([1.0 / self.counts[t] for t in targets], dtype=torch.float64)


class ClassWeightedLoss(nn.CrossEntropyLoss):
    """Cross-entropy weighted by class (and label-smoothed, where asked) in training mode and plain in
    evaluation mode (``.eval()``, as the loop sets it), so that validation and test losses mean what they
    mean without a remedy. One module for both, as the debugger hook watches one loss module."""

    def __init__(self, class_weight: torch.Tensor | None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.functional.cross_entropy(input, target)
        return nn.functional.cross_entropy(input, target, weight=self.class_weight, label_smoothing=self.smoothing)
