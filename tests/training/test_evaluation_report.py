import pytest

from trainlib.evaluation import classification_report


def test_report_matches_a_hand_computed_example():
    #            targets: a a a b b c ; predictions: a a b b c c
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1.0), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (c["precision"], c["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert a["f1"] == pytest.approx(0.8)
    assert report["macro_avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx(4 / 6)


def test_class_never_predicted_has_zero_precision_not_nan():
    report = classification_report([0, 1], [0, 0], ["a", "b"])
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_balanced_accuracy_and_macro_f1_weigh_every_class_alike():
    # 90 images of "common", 10 of "rare": predicting "common" always is 90% accurate, 50% balanced.
    targets = [0] * 90 + [1] * 10
    report = classification_report(targets, [0] * 100, ["common", "rare"])
    assert report["accuracy"] == 0.9 and report["balanced_accuracy"] == 0.5
    assert report["macro_f1"] == pytest.approx((2 * 0.9 / 1.9 + 0.0) / 2)
    perfect = classification_report(targets, targets, ["common", "rare"])
    assert perfect["balanced_accuracy"] == perfect["macro_f1"] == 1.0
    # A class the split does not hold does not count against balanced accuracy.
    absent = classification_report([0, 0, 1, 1], [0, 0, 1, 0], ["a", "b", "never"])
    assert absent["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
