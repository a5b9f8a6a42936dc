"""The promotion gate: a new version replaces the serving one only if it is not worse on its terms."""

from chalice_app import gate


def _evaluation(recalls: dict[str, float], f1: float, baseline: dict | None = None) -> dict:
    report = {
        "classes": sorted(recalls),
        "per_class": {c: {"precision": r, "recall": r, "f1": r, "support": 10} for c, r in recalls.items()},
        "macro_avg": {"precision": f1, "recall": f1, "f1": f1},
        "split": "test",
    }
    if baseline is not None:
        report["baseline"] = baseline
    return report


def _baseline(run: str, recalls: dict[str, float], f1: float) -> dict:
    return {"run_id": run, "classes_match": True, **_evaluation(recalls, f1)}


def test_the_first_version_always_passes():
    verdict = gate.judge(_evaluation({"a": 0.1, "b": 0.1}, 0.1), None, None, 0.01, 0.05)
    assert verdict.passed and verdict.basis == "first version"


def test_compared_on_the_same_split_within_the_tolerances():
    serving = {"a": 0.90, "b": 0.80}
    new = _evaluation({"a": 0.86, "b": 0.85}, 0.845, _baseline("dogs-11111111", serving, 0.85))
    verdict = gate.judge(new, "dogs-11111111", None, 0.01, 0.05)
    assert verdict.passed, verdict.reasons
    assert verdict.comparison["recall"]["a"] == {"serving": 0.9, "new": 0.86, "change": -0.04}
    assert "same" in verdict.basis or "split" in verdict.basis


def test_a_macro_f1_drop_or_a_class_recall_drop_holds_it():
    serving = {"a": 0.90, "b": 0.80}
    worse_f1 = gate.judge(
        _evaluation({"a": 0.90, "b": 0.80}, 0.83, _baseline("r-1", serving, 0.85)), "r-1", None, 0.01, 0.05
    )
    assert not worse_f1.passed and "macro-F1" in worse_f1.reasons[0]
    worse_class = gate.judge(
        _evaluation({"a": 0.84, "b": 0.95}, 0.90, _baseline("r-1", serving, 0.85)), "r-1", None, 0.01, 0.05
    )
    assert not worse_class.passed and worse_class.reasons == [
        "recall of 'a' 0.8400 is 0.0600 below the serving version's 0.9000 (at most 0.05 allowed)"
    ]
    assert worse_class.comparison["recall"]["b"]["change"] == 0.15


def test_the_baseline_must_be_the_serving_run():
    """A baseline of another run (the endpoint moved on meanwhile) is not the serving version's terms:
    its own evaluation is used instead."""
    stale = _evaluation({"a": 0.9}, 0.9, _baseline("r-old", {"a": 0.1}, 0.1))
    verdict = gate.judge(stale, "r-now", _evaluation({"a": 0.99}, 0.99), 0.01, 0.05)
    assert not verdict.passed and "own evaluation" in verdict.basis


def test_different_class_sets_are_not_compared():
    new = _evaluation({"a": 0.5, "c": 0.5}, 0.5, {"run_id": "r-1", "classes_match": False, "classes": ["a", "b"]})
    assert gate.judge(new, "r-1", None, 0.01, 0.05).passed
    assert gate.judge(
        _evaluation({"a": 0.5, "c": 0.5}, 0.5), "r-1", _evaluation({"a": 0.9, "b": 0.9}, 0.9), 0.01, 0.05
    ).passed


def test_nothing_to_compare_holds_it_for_a_person():
    assert not gate.judge(None, "r-1", None, 0.01, 0.05).passed
    verdict = gate.judge(
        _evaluation({"a": 0.9}, 0.9, {"error": "the baseline archive cannot be read"}), "r-1", None, 0.01, 0.05
    )
    assert not verdict.passed and "cannot be read" in verdict.reasons[0]


def test_a_class_added_by_review_is_judged_on_the_classes_both_know():
    """The new version's own recalls on its new class do not count; on the shared classes it must hold up."""
    shared = {"a": 0.90, "b": 0.80}

    def with_class_added(new_shared: dict[str, float], f1: float) -> dict:
        baseline = {
            **_baseline("r-1", shared, 0.85),
            "classes_match": False,
            "classes": ["a", "b"],
            "shared_classes": ["a", "b"],
            "new": _evaluation(new_shared, f1),
        }
        return _evaluation({**new_shared, "zebra": 0.0}, 0.1, baseline)

    verdict = gate.judge(with_class_added({"a": 0.9, "b": 0.82}, 0.86), "r-1", None, 0.01, 0.05)
    assert verdict.passed, verdict.reasons
    assert verdict.basis == "the 2 classes both versions know (new: zebra), on the same split"
    assert set(verdict.comparison["recall"]) == {"a", "b"}
    held = gate.judge(with_class_added({"a": 0.7, "b": 0.82}, 0.76), "r-1", None, 0.01, 0.05)
    assert not held.passed and "recall of 'a'" in held.reasons[-1] and "zebra" in held.basis
