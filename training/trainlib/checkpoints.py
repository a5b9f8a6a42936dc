"""Per-epoch checkpoints for managed spot training: written atomically, resumed only when they match.

SageMaker syncs ``/opt/ml/checkpoints`` to S3 and restores it when a spot job restarts. Each job
writes in a folder of its own name there, and a checkpoint is named by a fingerprint of what shapes
the run (architecture, classes, hyperparameters), so a folder left over from another run is never
resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from trainlib.distributed import World, gather

log = logging.getLogger(__name__)


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_folder(directory: Path | None) -> Path | None:
    """This job's own folder in ``directory``. SageMaker syncs the whole folder with one S3 prefix, which
    all of a tuning job's trials share: each keeps its checkpoints under its own name there
    (``runs/<run>/checkpoints/<stage>/<job>/``), and a restarted job finds its own again."""
    job = os.environ.get("TRAINING_JOB_NAME", "").strip()
    return directory / job if directory is not None and job and "/" not in job else directory


def usable_dir(path: Path | None, purpose: str = "checkpoints") -> Path | None:
    """``path`` created if possible; ``None`` (``purpose`` off, with a warning) when not writable."""
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: parallel jobs may share the folder
        probe.write_bytes(b"")
        probe.unlink()
        return path
    except OSError as exc:
        log.warning("%s disabled: %s is not writable (%s)", purpose, path, exc)
        return None


def usable_by_all(path: Path | None, world: World) -> Path | None:
    """``usable_dir`` as rank 0 judges it, for every process: all resume from it, or none (the others
    only read it, and write nothing there, not even the probe)."""
    usable = usable_dir(path) if world.main else path
    return usable if gather(world, [usable is not None])[0][0] else None


def path_for(directory: Path, fingerprint_: str) -> Path:
    return directory / f"checkpoint-{fingerprint_}.pt"


def save(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` so that a crash mid-write leaves the previous checkpoint intact."""
    target = path_for(directory, state["fingerprint"])
    tmp = target.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)


def load(directory: Path | None, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` if it belongs to this run, else ``None``."""
    if directory is None:
        return None
    path = path_for(directory, expected_fingerprint)
    if not path.is_file():
        return None
    try:
        # Tensors, numbers, strings and containers only: a checkpoint synced from S3 that someone
        # tampered with cannot run code when it is loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.warning("ignoring checkpoint %s: it belongs to a different run", path)
        return None
    return state
