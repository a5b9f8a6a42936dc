"""Warm start (``POST /projects/{project}/retrain``): a new run begins from the serving version's weights.

The ``warmstart`` channel holds the serving ``model.tar.gz``. Every weight is taken from it; the
classification layer's rows are taken by class name, so a class the review added starts from this
model's fresh initialisation while the known ones keep what they learned (and a class the dataset no
longer has is dropped). Only the same architecture can be warm-started: anything else is a clear error.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from trainlib.baseline import BaselineError, model_dir
from trainlib.errors import TrainingError
from trainlib.models import ARCHS


class WarmStartError(TrainingError):
    """The serving model cannot start this run."""


def warm_start(model: nn.Module, arch: str, classes: list[str], channel: Path) -> str:
    """Load the channel's model into ``model`` (built for ``arch`` and ``classes``); returns the log line."""
    with tempfile.TemporaryDirectory(prefix="droptrain-warm-") as work:
        try:
            folder = model_dir(channel, Path(work), "warmstart")
            meta = json.loads((folder / "model.json").read_text())
            # weights_only: the state dict holds tensors alone, and nothing in it may run code.
            state = torch.load(folder / "model.pth", map_location="cpu", weights_only=True)
        except (BaselineError, OSError, ValueError, RuntimeError) as exc:
            raise WarmStartError(f"the serving model cannot be read for a warm start: {exc}") from None
    if meta.get("arch") != arch:
        raise WarmStartError(f"the serving model is a {meta.get('arch')}, this run trains a {arch}: no warm start")
    known = list(meta.get("classes") or [])
    own = model.state_dict()
    linear = ARCHS[arch].linear
    for key in (f"{linear}.weight", f"{linear}.bias"):
        rows = own[key].clone()
        for i, name in enumerate(classes):
            if name in known:
                rows[i] = state[key][known.index(name)]
        state[key] = rows
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WarmStartError(f"the serving model's weights do not fit this run's model: {exc}"[:500]) from None
    added = [name for name in classes if name not in known]
    return f"warm start from {meta.get('run_id') or 'the serving model'}: {len(classes) - len(added)} known " + (
        f"classes, new: {', '.join(added)}" if added else "classes, none new"
    )
