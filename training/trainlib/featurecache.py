"""Frozen-backbone features kept on disk, so that the trials of one tuning job compute them once.

Head-mode trials differ in learning rate, epochs, batch size and weight decay, never in what the
frozen backbone makes of an image: the first trial runs the backbone over each split and stores the
result; the others load it. An entry is named by a digest of everything the features depend on:
the backbone's weights (so architecture, ImageNet-or-not and, for random weights, the seed), the
eval transform's sizes and normalisation, and each sample's bytes and class index in split order.
A changed image, a different split or another backbone is simply another entry.

Parallel trials take an exclusive lock per entry, so the second waits for the first instead of
computing the same features twice. A damaged entry is recomputed, never trusted. In a job of several
processes rank 0 alone opens the cache and shares what it holds; on a miss every process computes
its share and rank 0 stores the whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from trainlib import checkpoints
from trainlib.distributed import World, gather
from trainlib.loading import FeatureSet

log = logging.getLogger(__name__)
_VERSION = b"droptrain-features-v1"


def backbone_digest(backbone: nn.Module) -> str:
    """A digest of the backbone's parameters and buffers (BatchNorm statistics included)."""
    h = hashlib.sha256(_VERSION)
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def split_key(backbone: str, transform: str, samples: Sequence[tuple[Path, int]]) -> str:
    h = hashlib.sha256(_VERSION)
    h.update(backbone.encode())
    h.update(transform.encode())
    for path, target in samples:
        h.update(_file_digest(path))
        h.update(target.to_bytes(4, "little"))
    return h.hexdigest()[:32]


def _file_digest(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError as exc:  # an unreadable file is skipped at decode time; it still shapes the key
        return f"unreadable:{path.name}:{exc.errno}".encode()


class FeatureCache:
    """Entries under ``root`` (``<key>.pt`` plus a ``<key>.lock``)."""

    def __init__(self, root: Path):
        self.root = root

    def get_or_compute(
        self, key: str, compute: Callable[[], FeatureSet], device: torch.device
    ) -> tuple[FeatureSet, bool]:
        """The features for ``key`` and whether they came from the cache."""
        path = self.root / f"{key}.pt"
        with self._locked(key):
            cached = self._load(path, device)
            if cached is not None:
                return cached, True
            features = compute()
            self._store(path, features)
            return features, False

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with open(self.root / f"{key}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _load(path: Path, device: torch.device) -> FeatureSet | None:
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location=device, weights_only=True)
            features = FeatureSet(entry["features"], entry["targets"], int(entry["skipped"]))
        except (
            OSError,
            RuntimeError,
            EOFError,
            KeyError,
            TypeError,
            ValueError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ) as exc:
            log.warning("recomputing frozen features: the cached entry %s is unreadable (%s)", path.name, exc)
            return None
        if features.features.shape[0] != features.targets.shape[0]:
            log.warning("recomputing frozen features: the cached entry %s is inconsistent", path.name)
            return None
        return features

    @staticmethod
    def _store(path: Path, features: FeatureSet) -> None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save(
                {"features": features.features.cpu(), "targets": features.targets.cpu(), "skipped": features.skipped},
                tmp,
            )
            os.replace(tmp, path)  # readers see a whole entry or none
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("frozen features not cached (%s); this run is unaffected", exc)


def shared(
    cache: FeatureCache | None, key: str, compute: Callable[[], FeatureSet], device: torch.device, world: World
) -> tuple[FeatureSet, bool]:
    """``get_or_compute`` for a job of several processes, with rank 0's cache (``None`` on the others,
    which never touch it): rank 0 looks the entry up, holding its lock while every process computes its
    share on a miss, and hands what it found to the others."""
    if not world.distributed:
        assert cache is not None
        return cache.get_or_compute(key, compute, device)
    path = cache.root / f"{key}.pt" if cache is not None else None
    with cache._locked(key) if cache is not None else contextlib.nullcontext():
        found = FeatureCache._load(path, device) if path is not None else None
        entry = gather(world, [_portable(found)])[0][0]  # rank 0's
        if entry is not None:
            return FeatureSet(entry.features.to(device), entry.targets.to(device), entry.skipped), True
        features = compute()  # every process's share, gathered: the whole split in each
        if path is not None:
            FeatureCache._store(path, features)
        return features, False


def _portable(features: FeatureSet | None) -> FeatureSet | None:
    """On the CPU, to travel between processes."""
    if features is None:
        return None
    return FeatureSet(features.features.cpu(), features.targets.cpu(), features.skipped)


def open_cache(root: Path | None) -> FeatureCache | None:
    """The cache at ``root``, or ``None`` (no caching, with a warning) when it cannot be written."""
    usable = checkpoints.usable_dir(root, "feature cache")
    return FeatureCache(usable) if usable is not None else None
