"""Temperature scaling, the reliability bins, and the per-class thresholds of "not sure"
(``trainlib.calibration``), on logits whose calibration is known by construction."""

from __future__ import annotations

import pytest
import torch

from trainlib.calibration import (
    BINS,
    Outputs,
    abstains,
    calibrate,
    class_thresholds,
    fit_temperature,
    reliability,
)
from trainlib.errors import InvalidOptionError
from trainlib.predictor import Options


def _sampled(n: int, classes: int, sharpen: float, seed: int) -> Outputs:
    """Targets drawn from softmax(z): z is calibrated by construction; ``sharpen`` × z is over-confident."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=generator) * 2.0
    targets = torch.multinomial(torch.softmax(z, 1), 1, generator=generator).squeeze(1)
    return Outputs(z * sharpen, targets)


def test_temperature_undoes_over_confidence_and_lowers_the_held_out_error():
    valid, test = _sampled(4000, 5, 3.0, seed=1), _sampled(4000, 5, 3.0, seed=2)
    assert fit_temperature(valid) == pytest.approx(3.0, rel=0.15)
    result = calibrate(valid, test, "test", [f"c{i}" for i in range(5)])
    e = result.evaluation
    assert e["ece_after"] < e["ece_before"] / 2, e
    assert result.temperature == e["temperature"] == e["fitted_temperature"] and "reason" not in e
    assert len(e["bins"]) == len(e["bins_before"]) == BINS
    assert sum(b["count"] for b in e["bins"]) == 4000
    # Scaling never changes which class wins.
    assert torch.equal((test.logits / result.temperature).argmax(1), test.logits.argmax(1))


def test_a_temperature_that_worsens_the_held_out_split_is_not_kept():
    # Fitted on an over-confident validation split, applied to a calibrated test split: worse there.
    result = calibrate(_sampled(3000, 4, 3.0, seed=3), _sampled(3000, 4, 1.0, seed=4), "test", list("abcd"))
    e = result.evaluation
    assert e["fitted_temperature"] > 2 and result.temperature == e["temperature"] == 1.0
    assert e["ece_after"] == e["ece_before"] and "raised the test split's" in e["reason"]
    assert "not kept" in result.line()


def test_reliability_bins_and_error_by_hand():
    probabilities = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.3, 0.7]])
    targets = torch.tensor([0, 1, 0, 1])
    ece, bins = reliability(probabilities, targets, bins=10)
    # Confidences 0.95 (twice, half right), 0.55 (right), 0.7 (right).
    assert ece == pytest.approx((2 * abs(0.95 - 0.5) + abs(0.55 - 1) + abs(0.7 - 1)) / 4)
    counted = {(b["lower"], b["upper"]): b for b in bins if b["count"]}
    assert counted[(0.9, 1.0)]["accuracy"] == 0.5 and counted[(0.5, 0.6)]["count"] == 1
    assert all(b["confidence"] is None for b in bins if not b["count"])


def test_each_class_threshold_is_the_lowest_that_reaches_the_target_precision():
    data = _sampled(3000, 3, 1.0, seed=5)
    probabilities = torch.softmax(data.logits, 1)
    confidence, predicted = probabilities.max(1)
    thresholds = class_thresholds(probabilities, data.targets, ["a", "b", "c"], 0.8)
    for index, name in enumerate("abc"):
        t = thresholds[name]
        mine = predicted == index

        def precision(at: float, mine=mine, index=index) -> float:
            kept = mine & (confidence >= at)
            return float((data.targets[kept] == index).float().mean())

        assert t is not None and t < 1.0
        assert precision(t) >= 0.8
        lower = confidence[mine & (confidence < t)]
        assert all(precision(float(c)) < 0.8 for c in lower), "no lower threshold reaches the target"


def test_a_class_never_predicted_has_no_threshold_and_one_never_precise_enough_always_abstains():
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0]])
    targets = torch.tensor([1, 1, 0])  # every prediction wrong
    thresholds = class_thresholds(probabilities, targets, ["a", "b", "c"], 0.9)
    assert thresholds == {"a": 1.0, "b": 1.0, "c": None}
    assert abstains(0.99, "a", thresholds, 0.0) and not abstains(0.99, "c", thresholds, 0.0)
    assert abstains(0.5, "c", thresholds, 0.6), "min_confidence applies to every class"


def test_abstention_on_the_held_out_split_is_reported():
    valid, test = _sampled(3000, 3, 1.0, seed=6), _sampled(3000, 3, 1.0, seed=7)
    result = calibrate(valid, test, "test", ["a", "b", "c"], target_precision=0.9)
    report = result.evaluation["abstention"]
    assert 0 < report["abstained_share"] < 1 and report["images"] == 3000
    assert report["answered_accuracy"] > 0.85, "thresholds chosen on valid hold on test (same distribution)"
    assert result.serving()["thresholds"].keys() == {"a", "b", "c"}


@pytest.mark.parametrize(
    "pairs, code",
    [
        ([("min_confidence", "1.5")], "invalid_min_confidence"),
        ([("min_confidence", "-0.1")], "invalid_min_confidence"),
        ([("min_confidence", "nan")], "invalid_min_confidence"),
        ([("min_confidence", "high")], "invalid_min_confidence"),
        ([("explain", "yes")], "invalid_explain"),
    ],
)
def test_request_options_out_of_range_are_refused(pairs, code):
    with pytest.raises(InvalidOptionError) as info:
        Options.parse(pairs)
    assert (info.value.status, info.value.code) == (400, code)


def test_request_options():
    assert Options.parse([]) == Options(False, None)
    assert Options.parse([("explain", "TRUE"), ("min_confidence", "0.25")]) == Options(True, 0.25)
    assert Options.parse([("min_confidence", "")]) == Options(False, None)


def test_the_report_draws_the_reliability_diagram_and_says_why_a_temperature_was_not_kept(tmp_path):
    from trainlib import report

    result = calibrate(_sampled(3000, 4, 3.0, seed=3), _sampled(3000, 4, 1.0, seed=4), "test", list("abcd"))
    evaluation = {"classes": list("abcd"), "confusion_matrix": [[1, 0, 0, 0]] * 4, "split": "test"}
    evaluation["calibration"] = result.evaluation
    page = report.render(
        tmp_path / "report.html", run_id="r", history=[], evaluation=evaluation, verdicts=[], profile={}, findings=[]
    ).read_text()
    assert page.count("data:image/png;base64,") == 2, "the confusion matrix and the reliability diagram"
    assert "Temperature 1:" in page and "raised the test split&#x27;s expected calibration error" in page


def test_several_processes_logits_come_back_in_the_splits_order_beside_their_targets(monkeypatch):
    """Each process evaluates every other image (``shard``); the gathered rows must line up with the
    gathered targets as one process's would, or calibration would fit noise."""
    from trainlib import loop
    from trainlib.distributed import World

    split = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)  # image i's logits start at 3i
    shares = [[0, 2, 4], [1, 3]]  # what shard() gives two processes
    parts = [[(list(share), [10 + i for i in share], split[share])] for share in shares]
    monkeypatch.setattr(loop, "gather", lambda world, items: parts)
    predictions, targets, rows = loop._gathered(World(size=2, rank=0), [], [], torch.empty(0, 3))
    assert predictions == [0, 1, 2, 3, 4] and targets == [10, 11, 12, 13, 14]
    assert torch.equal(rows, split)
