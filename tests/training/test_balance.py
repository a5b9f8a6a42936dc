"""Imbalanced classes: the remedy a run takes, the weighted loss, and the balanced draw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainlib.balance import IMBALANCED_RATIO, Remedy
from trainlib.distributed import World
from trainlib.loading import FeatureSet, image_loader

ALONE, TWO = World(), World(size=2, rank=0, local_rank=0, backend="gloo")


def _train(counts: list[int]) -> list[tuple[Path, int]]:
    return [(Path(f"{c}-{i}.jpg"), c) for c, n in enumerate(counts) for i in range(n)]


@pytest.mark.parametrize(
    "asked, counts, world, mode",
    [
        ("auto", [30, 30, 11], ALONE, "off"),  # 2.7:1
        ("auto", [30, 30, 10], ALONE, "weights"),  # 3:1
        ("off", [90, 10], ALONE, "off"),
        ("sampler", [90, 10], ALONE, "sampler"),
        ("sampler", [90, 10], TWO, "weights"),  # several processes draw one shuffle: weights instead
        ("weights", [10, 10], ALONE, "weights"),
    ],
)
def test_the_remedy_follows_the_classes_counts(asked, counts, world, mode):
    remedy = Remedy.of(asked, _train(counts), len(counts), world)
    assert remedy.mode == mode and "imbalance ratio" in remedy.why
    assert IMBALANCED_RATIO == 3.0, "the orchestrator's OBJECTIVE=auto turns at the same ratio"


def test_class_weights_make_the_rare_class_count_as_much_as_the_common_one():
    weighted = Remedy.of("weights", _train([90, 10]), 2, ALONE).criterion(torch.device("cpu"))
    assert weighted.class_weight.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    even = Remedy.of("weights", _train([10, 10]), 2, ALONE).criterion(torch.device("cpu"))
    assert even.class_weight.tolist() == [1, 1]
    plain = Remedy.of("off", _train([90, 10]), 2, ALONE).criterion(torch.device("cpu"))
    # A right answer on a common image and a wrong one on a rare image: the rare mistake weighs more.
    logits, targets = torch.tensor([[2.0, -2.0], [2.0, -2.0]]), torch.tensor([0, 1])
    common_right_rare_wrong = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert plain(logits, targets) == pytest.approx(common_right_rare_wrong.mean().item())
    assert weighted.train()(logits, targets) > plain(logits, targets), "weighted while training"
    assert weighted.eval()(logits, targets) == pytest.approx(plain(logits, targets).item()), "plain in evaluation"


def test_the_balanced_draw_fills_batches_about_equally_from_each_class():
    remedy = Remedy.of("sampler", _train([180, 20]), 2, ALONE)
    targets = [t for _, t in _train([180, 20])]
    features = FeatureSet(torch.zeros(len(targets), 4), torch.tensor(targets), 0)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([t for _, t, _ in features.batches(50, True, generator, draw=remedy.draw(targets))])
    assert len(drawn) == 200 and 0.4 <= drawn.float().mean().item() <= 0.6, "about half rare"
    assert Remedy.of("off", _train([180, 20]), 2, ALONE).draw(targets) is None
    loader = image_loader(_train([180, 20]), lambda image: image, 8, True, 0, False, 0, ALONE, remedy.draw(targets))
    assert type(loader.sampler).__name__ == "WeightedRandomSampler" and loader.sampler.replacement
    assert sorted(loader.sampler) != list(range(200)), "drawn with replacement, not a permutation"
