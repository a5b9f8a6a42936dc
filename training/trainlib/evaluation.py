"""Per-class precision/recall/F1, averages and the confusion matrix, as JSON-ready data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_report(targets: Sequence[int], predictions: Sequence[int], classes: Sequence[str]) -> dict:
    """The evaluation written beside the model (``evaluation.json``).

    ``confusion_matrix[i][j]`` counts images of class ``i`` predicted as class ``j``. A class
    with no predictions has precision 0 (and no support, recall 0), as scikit-learn's
    ``zero_division=0``.
    """
    n = len(classes)
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = support.sum()
    weights = support / total if total else np.zeros(n)

    def avg(values: np.ndarray, w: np.ndarray | None) -> float:
        return float(np.average(values, weights=w)) if w is not None else float(values.mean())

    present = support > 0
    return {
        "classes": list(classes),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        # The mean of the recalls of the classes the split holds (scikit-learn's balanced_accuracy_score):
        # a classifier that ignores a rare class loses that class's whole share, not its few images.
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": avg(f1, None),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "macro_avg": {
            "precision": avg(precision, None),
            "recall": avg(recall, None),
            "f1": avg(f1, None),
            "support": int(total),
        },
        "weighted_avg": {
            "precision": avg(precision, weights if total else None),
            "recall": avg(recall, weights if total else None),
            "f1": avg(f1, weights if total else None),
            "support": int(total),
        },
        "confusion_matrix": confusion.tolist(),
    }


def scores(targets: Sequence[int], predictions: Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of one pass (an epoch's metric line prints them)."""
    report = classification_report(targets, predictions, classes)
    return {key: report[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
