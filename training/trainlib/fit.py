"""What one run trains and where it stands: the objects ``train.py``'s steps pass between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainlib import checkpoints, distributed
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


def schedule(optimizer: torch.optim.Optimizer, epochs: int, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay over the epochs, after ``warmup`` epochs rising linearly from a tenth of the rate."""
    if not warmup:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup),
        ],
        milestones=[warmup],
    )


def save_checkpoint(fit: Fit, progress: Progress, epoch: int) -> None:
    """Everything a resumed job needs to go on as if never stopped, under this run's fingerprint."""
    checkpoints.save(
        progress.checkpoint_dir,
        {
            "fingerprint": progress.fingerprint,
            "epoch": epoch,
            "model": fit.model.state_dict(),
            "optimizer": fit.optimizer.state_dict(),
            "scheduler": fit.scheduler.state_dict(),
            "scaler": fit.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": progress.history,
        },
    )
