"""Batches for the training mode: decoded images, or a frozen backbone's features computed once.

Head mode without augmentation runs the frozen backbone once per image (and with ``--feature-cache``
once per machine: other runs on the same images and backbone load them) and trains the head on the
cached features every epoch after; otherwise images are decoded every epoch.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from trainlib import featurecache
from trainlib.balance import Remedy
from trainlib.datasets import Splits
from trainlib.distributed import ALONE, World, gather, per_process_batch, shard
from trainlib.errors import DatasetError, TrainingError
from trainlib.loading import Batch, FeatureSet, extract_features, image_loader
from trainlib.models import ARCHS, FrozenBackboneClassifier, backbone_of, head_of
from trainlib.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE, eval_transform, train_transform

log = logging.getLogger("train")


@dataclass
class Data:
    """Per-split batch sources, and the module the optimiser trains."""

    train_batches: Callable[[int], Iterable[Batch]]
    eval_batches: dict[str, Callable[[], Iterable[Batch]]]
    trainable: nn.Module
    decode_skipped: int = 0


def to_device(inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device; on CUDA, images in channels-last (what mixed precision convolutions want)."""
    inputs = inputs.to(device, non_blocking=True)
    if device.type == "cuda" and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is visible")
    if args.device == "cpu" or args.num_gpus == 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def pick_workers(args: argparse.Namespace, device: torch.device) -> int:
    if args.workers >= 0:
        return args.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return min(cpus, 8 * max(1, torch.cuda.device_count()))
    # On a small CPU machine decoding competes with the model for the same cores.
    return 0 if cpus <= 2 else min(4, cpus // 2)


def make_batches(
    args: argparse.Namespace,
    splits: Splits,
    model: nn.Module,
    device: torch.device,
    world: World = ALONE,
    remedy: Remedy | None = None,
) -> Data:
    """Batch sources for the training mode: head mode without augmentation runs the frozen backbone once
    per image and trains the head on the features every epoch after; otherwise images are decoded every
    epoch. With several processes each takes its share of every batch, evaluation and frozen pass."""
    amp = pin = device.type == "cuda"
    workers = pick_workers(args, device)
    remedy = remedy or Remedy("off", (), "")
    eval_tf = eval_transform(args.image_size, resize=ARCHS[args.arch].preprocessing(args.image_size)[1])
    batch_size = per_process_batch(args.batch_size, world)
    eval_bs = batch_size * 2
    head_mode = args.train_mode == "head"
    augment = args.augment == "on" or (args.augment == "auto" and not head_mode)

    def loader(samples, transform, batch_size, shuffle, world=ALONE, draw=None):
        return image_loader(samples, transform, batch_size, shuffle, workers, pin, args.seed, world, draw)

    eval_samples = {"valid": splits.valid, "test": splits.test}
    feature_batch = 32 if device.type == "cpu" else 256  # inference only: the device's best (CPU caches)
    if head_mode and not augment:
        backbone = backbone_of(model, args.arch)

        def compute(samples):  # this process's share of the frozen pass, then everyone's
            share = loader(shard(samples, world), eval_tf, feature_batch, False)
            return lambda: _whole(extract_features(backbone, share, device, amp), world, device)

        cached = frozen_features(args, backbone, {"train": splits.train, **eval_samples}, compute, device, world)
        _require_decoded(cached)
        generator = torch.Generator().manual_seed(args.seed)
        chances = remedy.draw(cached["train"].targets.tolist())  # under --class-balance sampler
        return Data(
            train_batches=lambda epoch: cached["train"].batches(batch_size, True, generator, world, chances),
            eval_batches={
                name: (lambda f=f: f.batches(eval_bs, False, world=world))
                for name, f in cached.items()
                if name != "train"
            },
            trainable=head_of(model, args.arch),
            decode_skipped=sum(f.skipped for f in cached.values()),
        )

    train_tf = train_transform(args.image_size, trivial=args.trivial_augment == "on") if augment else eval_tf
    train_loader = loader(splits.train, train_tf, batch_size, True, world, remedy.draw([t for _, t in splits.train]))
    eval_loaders = {
        name: loader(shard(samples, world), eval_tf, eval_bs, False)
        for name, samples in eval_samples.items()
        if samples
    }
    return Data(
        train_batches=_each_epoch(train_loader),
        eval_batches={name: (lambda loader=loader: loader) for name, loader in eval_loaders.items()},
        trainable=FrozenBackboneClassifier(model, args.arch) if head_mode else model,
    )


def _each_epoch(loader: DataLoader) -> Callable[[int], Iterable[Batch]]:
    """The loader for an epoch: a ``DistributedSampler`` reshuffles for each, the same on every process."""

    def batches(epoch: int) -> Iterable[Batch]:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        return loader

    return batches


def _whole(part: FeatureSet, world: World, device: torch.device) -> FeatureSet:
    """Every process's share of a frozen pass, together, in the split's order (``shard`` dealt the images
    round-robin), so that the shuffles that follow pick the same images as one process would."""
    if not world.distributed:
        return part
    parts = gather(world, [(part.features.cpu(), part.targets.cpu(), part.skipped)])
    features, targets = [f for ((f, _, _),) in parts], [t for ((_, t, _),) in parts]
    skipped = sum(s for ((_, _, s),) in parts)
    n = sum(len(t) for t in targets)
    if n == 0:
        return FeatureSet(part.features, part.targets, skipped)
    if any(len(t) != len(range(rank, n, world.size)) for rank, t in enumerate(targets)):
        # An image that failed to decode shifted the deal: each feature still has its target.
        return FeatureSet(torch.cat(features).to(device), torch.cat(targets).to(device), skipped)
    whole_features = torch.empty((n, *features[0].shape[1:]), dtype=features[0].dtype)
    whole_targets = torch.empty(n, dtype=targets[0].dtype)
    for rank in range(world.size):
        whole_features[rank :: world.size], whole_targets[rank :: world.size] = features[rank], targets[rank]
    return FeatureSet(whole_features.to(device), whole_targets.to(device), skipped)


def frozen_features(
    args, backbone: nn.Module, samples_by_split: dict, compute: Callable, device: torch.device, world: World = ALONE
) -> dict[str, FeatureSet]:
    """Each non-empty split's features: from ``--feature-cache`` when another run computed them, else computed.
    With several processes rank 0's cache serves them all (``featurecache.shared``)."""
    cache = featurecache.open_cache(args.feature_cache) if world.main else None
    cached = gather(world, [cache is not None])[0][0]  # rank 0's word: all use its cache, or none does
    digest = featurecache.backbone_digest(backbone) if cached else ""
    # CUDA computes them in mixed precision: not the same numbers as a CPU run's.
    transform = (
        f"eval:{args.image_size}:{ARCHS[args.arch].preprocessing(args.image_size)[1]}:{RESIZE}:{IMAGENET_MEAN}:"
        f"{IMAGENET_STD}:{device.type}"
    )
    out: dict[str, FeatureSet] = {}
    images = {True: 0, False: 0}  # by whether they came from the cache
    seconds = {True: 0.0, False: 0.0}
    for name, samples in samples_by_split.items():
        if not samples:
            continue
        started = time.perf_counter()
        if not cached:
            out[name], hit = compute(samples)(), False
        else:
            key = featurecache.split_key(digest, transform, samples)
            out[name], hit = featurecache.shared(cache, key, compute(samples), device, world)
        images[hit] += len(out[name].targets)
        seconds[hit] += time.perf_counter() - started
    # The benchmarks read these two lines.
    if images[False]:
        log.info("computed frozen features for %d images in %.3fs", images[False], seconds[False])
    if images[True]:
        log.info("loaded frozen features for %d images from the feature cache in %.3fs", images[True], seconds[True])
    return out


def _require_decoded(cached: dict[str, FeatureSet]) -> None:
    for name, features in cached.items():
        if len(features.targets) == 0:
            raise DatasetError(f"the {name} split has no decodable images ({features.skipped} failed to decode)")
