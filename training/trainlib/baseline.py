"""The serving model evaluated on this job's held-out split, for the promotion gate.

The final job gets the project's serving ``model.tar.gz`` as its ``baseline`` channel. Both models
are then judged on the very same images: the serving one with its own preprocessing (its
``model.json``: image size, normalisation), as its endpoint would see them. The result goes into
``evaluation.json`` under ``baseline``. A baseline that cannot be read or run never fails the job:
``baseline.error`` says why, and the gate holds the version for a person to decide. A new version that
knows a class more (added by review) is compared with the serving one on the classes both know.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trainlib.evaluation import classification_report
from trainlib.predictor import Classifier
from trainlib.transforms import open_image

log = logging.getLogger(__name__)
BATCH = 32
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BaselineError(Exception):
    """The baseline model cannot be evaluated."""


def model_dir(channel: Path, work_dir: Path, name: str = "baseline") -> Path:
    """The channel's model: an extracted folder (``model.json``) or one ``.tar.gz``, extracted here."""
    if (channel / "model.json").is_file():
        return channel
    archives = sorted(channel.glob("*.tar.gz"))
    if len(archives) != 1:
        raise BaselineError(f"the {name} channel holds {len(archives)} archives, not one model.tar.gz")
    target = work_dir / f"{name}-model"
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archives[0]) as tar:
            # Only the files that rebuild the model; "data" refuses links and paths outside target.
            members = [m for m in tar.getmembers() if m.name.lstrip("./") in ("model.json", "model.pth")]
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BaselineError(f"the {name} archive cannot be read: {exc}") from None
    if not (target / "model.json").is_file():
        raise BaselineError(f"the {name} archive has no model.json (not a droptrain model)")
    return target


def evaluate_baseline(
    channel: Path, work_dir: Path, samples: Sequence[tuple[Path, int]], classes: list[str], device: torch.device
) -> dict[str, Any]:
    """The baseline's report on ``samples`` (``classification_report`` plus ``run_id``), or ``{"error"}``.
    When it knows other classes (a class added by review): its report on the images of the classes both
    know (``shared_classes``), or ``{"run_id", "classes_match": False}`` when they share fewer than two."""
    try:
        model = Classifier.load(model_dir(channel, work_dir), device=str(device))
    except BaselineError as exc:
        return {"error": str(exc)}
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        return {"error": f"the baseline model cannot be loaded: {type(exc).__name__}: {exc}"[:500]}
    same = sorted(model.classes) == sorted(classes)
    shared = [name for name in classes if name in model.classes]
    if not same and len(shared) < 2:
        return {"run_id": model.run_id, "classes_match": False, "classes": model.classes}
    if not same:
        samples = [(path, target) for path, target in samples if classes[target] in shared]
    # The baseline's class order may differ: its outputs are mapped to this job's indices by name
    # (a class this job lacks to -1: always wrong).
    to_ours = torch.tensor([classes.index(name) if name in classes else -1 for name in model.classes])
    targets, predictions, skipped = _predict(model, samples, to_ours)
    if not targets:
        return {"run_id": model.run_id, "error": "no held-out image could be read"}
    if same:
        return {
            "run_id": model.run_id,
            "classes_match": True,
            "skipped_images": skipped,
            **classification_report(targets, predictions, classes),
        }
    return {
        "run_id": model.run_id,
        "classes_match": False,
        "classes": model.classes,
        "shared_classes": shared,
        "skipped_images": skipped,
        **shared_report(targets, predictions, classes, shared),
    }


def _predict(model: Classifier, samples: Sequence[tuple[Path, int]], to_ours: torch.Tensor) -> tuple[list, list, int]:
    """``(targets, predictions in this job's indices, images skipped)``."""
    targets: list[int] = []
    predictions: list[int] = []
    skipped = 0
    with torch.no_grad():
        for start in range(0, len(samples), BATCH):
            batch, batch_targets = [], []
            for path, target in samples[start : start + BATCH]:
                try:
                    batch.append(model.transform(open_image(path)))
                except _READ_ERRORS:
                    skipped += 1
                    continue
                batch_targets.append(target)
            if not batch:
                continue
            logits = model.model(torch.stack(batch).to(model.device))
            predictions += to_ours[logits.argmax(dim=1).cpu()].tolist()
            targets += batch_targets
    return targets, predictions, skipped


def shared_report(
    targets: Sequence[int], predictions: Sequence[int], classes: Sequence[str], shared: Sequence[str]
) -> dict[str, Any]:
    """``classification_report`` on the images of the ``shared`` classes alone, over those classes: a
    prediction of any other class (or -1) counts as wrong. What the gate compares when a class was added."""
    index = {classes.index(name): i for i, name in enumerate(shared)}
    other = len(shared)  # one more column: every prediction outside the shared classes
    kept = [(index[t], index.get(p, other)) for t, p in zip(targets, predictions) if t in index]
    report = classification_report([t for t, _ in kept], [p for _, p in kept], [*shared, "(other)"])
    del report["per_class"]["(other)"]
    f1 = [v["f1"] for v in report["per_class"].values()]
    report["classes"] = list(shared)
    report["macro_f1"] = report["macro_avg"]["f1"] = sum(f1) / len(f1)
    report["macro_avg"]["precision"] = sum(v["precision"] for v in report["per_class"].values()) / len(f1)
    report["macro_avg"]["recall"] = sum(v["recall"] for v in report["per_class"].values()) / len(f1)
    return report


def baseline_line(baseline: dict[str, Any]) -> str:
    """The job log's line about the baseline: ``baseline=<run> macro_f1=0.8123`` (and why not, if not)."""
    f1 = baseline.get("macro_avg", {}).get("f1", float("nan"))
    return f"baseline={baseline.get('run_id', '?')} macro_f1={f1:.4f}" + (
        f" ({baseline['error']})" if "error" in baseline else ""
    )
