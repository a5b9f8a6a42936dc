"""What one run trains and where it stands: the objects ``train.py``'s steps pass between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainlib import distributed
from trainlib.batches import Data


@dataclass
class Fit:
    """What trains and how: the model, its batches, and the optimiser's state."""

    model: nn.Module
    data: Data
    trainable: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    world: distributed.World = distributed.ALONE
    classes: tuple[str, ...] = ()

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"  # mixed precision on CUDA, as SageMaker's GPU instances train

    @property
    def bare(self) -> nn.Module:
        """The trained module without DDP's wrapper: what evaluation runs (the wrapper's forward would wait
        on the other processes, whose shares of a split may hold fewer batches) and the hook watches (its
        tensors keep their own names, which the rules read)."""
        return self.trainable.module if isinstance(self.trainable, DistributedDataParallel) else self.trainable


@dataclass
class Progress:
    """Where training stands: the history so far, the next epoch, and where checkpoints go."""

    history: list[dict]
    start_epoch: int
    checkpoint_dir: Path | None
    fingerprint: str
    train_images: int = 0
