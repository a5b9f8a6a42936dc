"""One epoch of training and one pass of evaluation, as torchvision's references write them: mixed
precision where the device has it, the debugger hook told which mode it is in, a NaN caught early."""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from trainlib import profiling
from trainlib.batches import to_device
from trainlib.distributed import ALONE, World, gather, total, unshard
from trainlib.errors import DatasetError, DivergedError
from trainlib.progress import ProgressLine


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seen: int
    skipped: int


def _check_finite(total_loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    if not torch.isfinite(total_loss):
        raise DivergedError(
            f"the training loss became NaN or infinite at epoch {epoch}, step {step} (lr={lr:g}): "
            "lower the learning rate or the weight decay"
        )


# Stateless: one instance stands in for every unprofiled epoch.
_NOT_TIMED = profiling.NullTimer()


def train_one_epoch(
    model,
    criterion,
    optimizer,
    batches,
    device,
    scaler,
    hook,
    epoch,
    amp,
    check_every=10,
    timer=_NOT_TIMED,
    progress: ProgressLine | None = None,
    world: World = ALONE,
) -> EpochStats:
    """One pass over this process's batches. With several processes, the model is a
    ``DistributedDataParallel`` and the statistics are summed over all of them; a process whose shard
    ran out of batches first (or met a batch with no decodable image) joins the others' last steps
    rather than leaving them waiting on its gradients."""
    model.train()
    criterion.train()  # a class-weighted loss weighs while training only (trainlib.balance)
    hook.set_mode("train")
    timer.epoch_start()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = skipped = step = 0
    lr = optimizer.param_groups[0]["lr"]
    uneven = Join([model]) if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
    with uneven:
        for inputs, targets, n_skipped in batches:
            skipped += n_skipped
            if inputs is None:
                continue
            inputs, targets = to_device(inputs, targets, device)
            timer.batch_ready()
            with torch.autocast(device_type=device.type, enabled=amp):
                logits = model(inputs)
                loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            timer.compute_done()
            scaler.step(optimizer)
            scaler.update()
            timer.step_done()
            step += 1
            total_loss += loss.detach().float() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
            if progress is not None:
                progress.step(len(targets))
            # A host sync every step would stall the GPU; a NaN is still caught within a few steps.
            if step % check_every == 0:
                _check_finite(total_loss, epoch, step, lr)
    _check_finite(total_loss, epoch, step, lr)
    loss_sum, correct_sum, seen_sum, skipped_sum = total(world, total_loss.item(), correct.item(), seen, skipped)
    if seen_sum == 0:
        raise DatasetError("no training image could be decoded")
    return EpochStats(loss_sum / seen_sum, correct_sum / seen_sum, int(seen_sum), int(skipped_sum))


@dataclass
class Pass:
    """One evaluation pass over a whole split: its statistics, and per image the prediction, the target
    and (when kept) the logits (one float32 row per image, on the CPU), in the same order."""

    stats: EpochStats
    predictions: list[int]
    targets: list[int]
    logits: torch.Tensor | None = None


@torch.no_grad()
def evaluate(model, criterion, batches, device, hook, amp, world: World = ALONE, keep_logits: bool = False) -> Pass:
    """One pass over this process's shard of a split; with several processes, every process gets the
    whole split's statistics and predictions (each with its target), gathered from all of them.
    ``keep_logits``: the logits too, for calibration (``trainlib.calibration``)."""
    model.eval()
    criterion.eval()
    hook.set_mode("eval")
    total_loss, seen, skipped = 0.0, 0, 0
    predictions: list[int] = []
    targets_all: list[int] = []
    kept: list[torch.Tensor] = []
    for inputs, targets, n_skipped in batches:
        skipped += n_skipped
        if inputs is None:
            continue
        inputs, targets = to_device(inputs, targets, device)
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(inputs)
            loss = criterion(logits.float(), targets)
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        predictions.extend(logits.argmax(1).tolist())
        targets_all.extend(targets.tolist())
        if keep_logits:
            kept.append(logits.float().cpu())
    rows = torch.cat(kept) if kept else None
    if world.distributed:
        predictions, targets_all, rows = _gathered(world, predictions, targets_all, rows)
        total_loss, seen, skipped = total(world, total_loss, seen, skipped)
    if seen == 0:
        raise DatasetError("no evaluation image could be decoded")
    accuracy = sum(p == t for p, t in zip(predictions, targets_all)) / seen
    return Pass(EpochStats(total_loss / seen, accuracy, int(seen), int(skipped)), predictions, targets_all, rows)


def _gathered(
    world: World, predictions: list[int], targets: list[int], rows: torch.Tensor | None
) -> tuple[list[int], list[int], torch.Tensor | None]:
    """Every process's share, back in the split's order (``unshard``); the logits as one tensor a process,
    not a Python float each (a split of 100,000 images and 1,000 classes would be gigabytes as floats)."""
    parts = [part[0] for part in gather(world, [(predictions, targets, rows)])]
    order = unshard([[(rank, i) for i in range(len(p[0]))] for rank, p in enumerate(parts)])
    predictions = [parts[rank][0][i] for rank, i in order]
    targets = [parts[rank][1][i] for rank, i in order]
    if rows is None:
        return predictions, targets, None
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + len(part[0]))
    every = torch.cat([part[2] for part in parts if part[2] is not None])
    return predictions, targets, every[torch.tensor([offsets[rank] + i for rank, i in order], dtype=torch.long)]


def make_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
