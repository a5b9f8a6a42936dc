"""The promotion gate (docs/architecture.md, "Projects and versions"): does a new version of a project
replace the serving one?

Pure: two evaluations (``evaluation.json`` as train.py writes it) in, a verdict out. The new version
passes unless, on the serving version's own terms, its macro-F1 is lower by more than
``max_f1_drop`` or some class's recall is lower by more than ``max_recall_drop``. Both are compared
on the same test split: train.py evaluates the serving model on the new job's test split (its
``baseline`` section). A new version that knows a class more (added by review) is compared on the classes
both know (the ``baseline`` section's ``shared_classes``, ``new``); class sets that share fewer than two
are different tasks: nothing to compare, it passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    # Per class: {"serving": recall, "new": recall, "change": new - serving}; plus macro-F1.
    comparison: dict[str, Any] = field(default_factory=dict)
    basis: str = ""

    def as_detail(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "basis": self.basis, "comparison": self.comparison}


def _recalls(evaluation: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(values["recall"]) for name, values in evaluation.get("per_class", {}).items()}


def _macro_f1(evaluation: Mapping[str, Any]) -> float:
    return float(evaluation["macro_avg"]["f1"])


def judge(
    new: Mapping[str, Any] | None,
    serving_run: str | None,
    serving_own: Mapping[str, Any] | None,
    max_f1_drop: float,
    max_recall_drop: float,
) -> Verdict:
    """``new`` is the new version's evaluation; ``serving_own`` the serving version's evaluation from
    its own job, used only when ``new`` holds no baseline for ``serving_run``."""
    if serving_run is None:
        return Verdict(True, ["the project's first version"], basis="first version")
    if not new or "per_class" not in new:
        return Verdict(False, ["the new version has no evaluation report to compare"], basis="no evaluation")
    baseline = new.get("baseline") or {}
    shared = baseline.get("shared_classes") if baseline.get("run_id") == serving_run else None
    if baseline.get("run_id") == serving_run and baseline.get("classes_match") and "per_class" in baseline:
        reference, basis = baseline, f"both evaluated on the new version's {new.get('split', 'test')} split"
    elif shared and "per_class" in baseline and "per_class" in (baseline.get("new") or {}):
        # A class added by review: both are judged on the images of the classes both know.
        added = sorted(set(new.get("classes") or []) - set(shared))
        new, reference = baseline["new"], baseline
        basis = f"the {len(shared)} classes both versions know (new: {', '.join(added) or 'none'}), on the same split"
    elif baseline.get("run_id") == serving_run and baseline.get("classes_match") is False:
        return Verdict(True, [f"the class sets differ from {serving_run}'s: not compared"], basis="different classes")
    elif serving_own and "per_class" in serving_own:
        reference, basis = serving_own, f"the new version's split against {serving_run}'s own evaluation"
    else:
        return Verdict(
            False,
            [
                f"the serving version {serving_run} could not be evaluated: "
                f"{baseline.get('error') or 'no evaluation of it'}"
            ],
            basis="no baseline",
        )
    new_recalls, old_recalls = _recalls(new), _recalls(reference)
    if set(new_recalls) != set(old_recalls):
        return Verdict(True, [f"the class sets differ from {serving_run}'s: not compared"], basis="different classes")
    reasons: list[str] = []
    f1_new, f1_old = _macro_f1(new), _macro_f1(reference)
    comparison: dict[str, Any] = {
        "macro_f1": {"serving": round(f1_old, 4), "new": round(f1_new, 4), "change": round(f1_new - f1_old, 4)},
        "recall": {},
    }
    if f1_old - f1_new > max_f1_drop + 1e-9:
        reasons.append(
            f"macro-F1 {f1_new:.4f} is {f1_old - f1_new:.4f} below the serving version's {f1_old:.4f} "
            f"(at most {max_f1_drop} allowed)"
        )
    for name in sorted(new_recalls):
        old, now = old_recalls[name], new_recalls[name]
        comparison["recall"][name] = {"serving": round(old, 4), "new": round(now, 4), "change": round(now - old, 4)}
        if old - now > max_recall_drop + 1e-9:
            reasons.append(
                f"recall of {name!r} {now:.4f} is {old - now:.4f} below the serving version's {old:.4f} "
                f"(at most {max_recall_drop} allowed)"
            )
    return Verdict(not reasons, reasons or ["not worse than the serving version"], comparison, basis)
