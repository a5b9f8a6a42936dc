"""Probabilities a user can read as chances, and "not sure" as an answer (docs/training-and-serving.md).

After training, one temperature ``T`` (logits / T) is fitted on the validation split by LBFGS on the
negative log-likelihood (Guo et al. 2017: a network's confidence drifts above its accuracy, and one
scalar brings it back without changing any prediction's order). Its effect is measured on the held-out
split as the expected calibration error over 15 equal-width confidence bins; a temperature that makes
that error worse there is not kept (``T`` = 1, and the evaluation says why).

With ``--target-precision``, each class gets the lowest confidence threshold at which the validation
split's predictions of that class (calibrated) are at least that precise; a prediction below its
class's threshold, or below ``--min-confidence``, abstains (the serving application answers
``"abstained": true``). ``model.json`` carries what serving needs (``calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BINS = 15
# A temperature outside this range is a fit gone wrong (a split of one class, or of a few images).
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass
class Outputs:
    """A split's logits (CPU, float32, one row per image) and its targets."""

    logits: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor | None, targets: Sequence[int]) -> Outputs:
        logits = rows if rows is not None else torch.empty(0, 0)
        return cls(logits.to("cpu", torch.float32), torch.tensor(targets, dtype=torch.long))


def fit_temperature(outputs: Outputs) -> float:
    """The ``T`` minimising the NLL of ``softmax(logits / T)`` (fitted as log T, so T stays positive)."""
    if len(outputs.targets) == 0:
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")
    nll = torch.nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = nll(outputs.logits / log_t.exp(), outputs.targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().exp())
    low, high = TEMPERATURE_RANGE
    return min(max(value, low), high) if math.isfinite(value) else 1.0


def reliability(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> tuple[float, list[dict]]:
    """Expected calibration error and its bins: ``[{"lower", "upper", "count", "confidence", "accuracy"}]``
    over equal-width bins of the top probability (a bin with no image has null confidence and accuracy)."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == targets).float()
    total = len(targets)
    ece, table = 0.0, []
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        inside = (confidence > lower) & (confidence <= upper) if b else (confidence <= upper)
        count = int(inside.sum())
        row = {"lower": round(lower, 6), "upper": round(upper, 6), "count": count, "confidence": None, "accuracy": None}
        if count:
            mean_confidence, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
            row.update(confidence=round(mean_confidence, 6), accuracy=round(accuracy, 6))
            ece += count / total * abs(mean_confidence - accuracy)
        table.append(row)
    return ece, table


def class_thresholds(
    probabilities: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], target_precision: float
) -> dict[str, float | None]:
    """Per class, the lowest confidence at which predictions of it are at least ``target_precision``
    precise on this split: 1.0 where no threshold reaches it (the class abstains short of certainty), ``None`` where
    the split has no prediction of the class (only ``min_confidence`` applies to it)."""
    confidence, predicted = probabilities.max(dim=1)
    thresholds: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        mine = predicted == index
        if not bool(mine.any()):
            thresholds[name] = None
            continue
        order = torch.argsort(confidence[mine], descending=True)
        scores = confidence[mine][order]
        hits = (targets[mine][order] == index).float().cumsum(0)
        precision = hits / torch.arange(1, len(scores) + 1)
        # Keeping the k most confident predictions means threshold scores[k-1]; ties share one threshold,
        # so only the last of a run of equal scores is a threshold that can be applied.
        last_of_tie = torch.ones_like(scores, dtype=torch.bool)
        last_of_tie[:-1] = scores[:-1] != scores[1:]
        good = (precision >= target_precision) & last_of_tie
        # Rounded down to the answers' 6 decimals: the image at the threshold is answered, not abstained on.
        thresholds[name] = math.floor(float(scores[good].min()) * 1e6) / 1e6 if bool(good.any()) else 1.0
    return thresholds


@dataclass
class Calibration:
    """What serving applies (``model.json``'s ``calibration``) and what evaluation reports."""

    temperature: float
    min_confidence: float
    thresholds: dict[str, float | None]
    target_precision: float | None
    evaluation: dict

    def line(self) -> str:
        """The job log's line (``calibration: temperature=1.42 ece_before=0.0810 ece_after=0.0230``)."""
        e = self.evaluation
        kept = "" if "reason" not in e else f" (fitted {e['fitted_temperature']:.4f}, not kept)"
        return (
            f"calibration: temperature={self.temperature:.4f}{kept} "
            f"{e['split']}_ece_before={e['ece_before']:.4f} {e['split']}_ece_after={e['ece_after']:.4f}"
        )

    def serving(self) -> dict:
        return {
            "temperature": self.temperature,
            "min_confidence": self.min_confidence,
            "target_precision": self.target_precision,
            "thresholds": self.thresholds,
        }


def calibrate(
    valid: Outputs,
    held_out: Outputs,
    split: str,
    classes: Sequence[str],
    target_precision: float | None = None,
    min_confidence: float = 0.0,
) -> Calibration:
    """Fit on ``valid``, measure on ``held_out`` (the ``split`` named), choose the thresholds on ``valid``."""
    fitted = fit_temperature(valid)
    ece_before, bins_before = reliability(torch.softmax(held_out.logits, 1), held_out.targets)
    ece_after, bins_after = reliability(torch.softmax(held_out.logits / fitted, 1), held_out.targets)
    evaluation: dict = {"split": split, "fitted_on": "valid", "fitted_temperature": round(fitted, 6)}
    temperature = fitted
    if ece_after > ece_before:
        temperature, ece_after, bins_after = 1.0, ece_before, bins_before
        evaluation["reason"] = (
            f"the temperature fitted on the validation split ({fitted:.3f}) raised the {split} split's "
            f"expected calibration error from {ece_before:.4f}; left at 1"
        )
    evaluation.update(
        temperature=round(temperature, 6),
        ece_before=round(ece_before, 6),
        ece_after=round(ece_after, 6),
        bins=bins_after,
        bins_before=bins_before,
    )
    thresholds: dict[str, float | None] = {}
    if target_precision is not None:
        thresholds = class_thresholds(
            torch.softmax(valid.logits / temperature, 1), valid.targets, classes, target_precision
        )
        evaluation["abstention"] = abstention(
            torch.softmax(held_out.logits / temperature, 1), held_out.targets, classes, thresholds, min_confidence
        )
    elif min_confidence > 0:
        evaluation["abstention"] = abstention(
            torch.softmax(held_out.logits / temperature, 1), held_out.targets, classes, {}, min_confidence
        )
    return Calibration(round(temperature, 6), min_confidence, thresholds, target_precision, evaluation)


def abstains(confidence: float, label: str, thresholds: dict[str, float | None], min_confidence: float) -> bool:
    """Whether a prediction of ``label`` at ``confidence`` is "not sure" (the serving rule)."""
    threshold = thresholds.get(label)
    return confidence < min_confidence or (threshold is not None and confidence < threshold)


def abstention(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    classes: Sequence[str],
    thresholds: dict[str, float | None],
    min_confidence: float,
) -> dict:
    """On a held-out split: the share of images abstained on, and the precision of the answers given."""
    confidence, predicted = probabilities.max(dim=1)
    answered = torch.tensor(
        [
            not abstains(float(c), classes[int(p)], thresholds, min_confidence)
            for c, p in zip(confidence.tolist(), predicted.tolist())
        ],
        dtype=torch.bool,
    )
    total, given = len(targets), int(answered.sum())
    correct = int((predicted[answered] == targets[answered]).sum()) if given else 0
    return {
        "abstained_share": round(1 - given / total, 6) if total else 0.0,
        "answered_accuracy": round(correct / given, 6) if given else None,
        "answered": given,
        "images": total,
    }
