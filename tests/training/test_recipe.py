"""The fine-tuning recipe (full mode from ImageNet weights): label smoothing, TrivialAugment and a linear
warm-up before the cosine schedule, each on by default there, off elsewhere, each a hyperparameter."""

from __future__ import annotations

import pytest
import torch
import train
from torchvision.transforms import v2

from trainlib.balance import Remedy
from trainlib.distributed import ALONE
from trainlib.fit import schedule
from trainlib.transforms import train_transform


def _parsed(tmp_path, *flags: str):
    return train.parse_args(["--data-dir", str(tmp_path), *flags])


def test_fine_tuning_takes_the_recipe_and_everything_else_the_plain_loop(tmp_path):
    tuning = _parsed(tmp_path, "--train-mode", "full", "--weights", "imagenet", "--epochs", "5")
    assert (tuning.trivial_augment, tuning.label_smoothing, tuning.warmup_epochs) == ("on", 0.1, 1)
    for flags in (("--train-mode", "head", "--weights", "imagenet"), ("--train-mode", "full", "--weights", "none")):
        plain = _parsed(tmp_path, *flags, "--epochs", "5")
        assert (plain.trivial_augment, plain.label_smoothing, plain.warmup_epochs) == ("off", 0.0, 0)
    short = _parsed(tmp_path, "--train-mode", "full", "--weights", "imagenet", "--epochs", "2")
    assert short.warmup_epochs == 0, "no warm-up eats half of a two-epoch run"
    chosen = _parsed(tmp_path, "--label-smoothing", "0.2", "--trivial-augment", "on", "--warmup-epochs", "2")
    assert (chosen.label_smoothing, chosen.trivial_augment, chosen.warmup_epochs) == (0.2, "on", 2)
    assert train.hyperparameters(chosen)["label-smoothing"] == 0.2, "recorded in model.json"


@pytest.mark.parametrize("flags", [("--label-smoothing", "0.7"), ("--warmup-epochs", "5", "--epochs", "5")])
def test_recipe_values_out_of_range_are_refused(tmp_path, flags, capsys):
    with pytest.raises(SystemExit):
        _parsed(tmp_path, *flags)
    assert "must be from 0" in capsys.readouterr().err


def test_the_warm_up_rises_linearly_from_a_tenth_then_the_cosine_decays():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = schedule(optimizer, epochs=6, warmup=2)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[1] == pytest.approx(0.55)
    assert rates[2] == pytest.approx(1.0) and rates[2] > rates[3] > rates[4] > rates[5] > 0
    plain = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert isinstance(schedule(plain, 6, 0), torch.optim.lr_scheduler.CosineAnnealingLR)


def test_label_smoothing_changes_the_training_loss_only():
    logits, targets = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 1])
    loss = Remedy("off", (5, 5, 5), "").criterion(torch.device("cpu"), label_smoothing=0.1)
    loss.train()
    smoothed = loss(logits, targets)
    assert smoothed == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1))
    loss.eval()
    assert loss(logits, targets) == pytest.approx(torch.nn.functional.cross_entropy(logits, targets))
    assert smoothed > loss(logits, targets)
    weighted = Remedy.of("weights", [("x", 0)] * 9 + [("y", 1)], 2, ALONE).criterion(torch.device("cpu"), 0.1)
    weighted.train()
    both = torch.nn.functional.cross_entropy(
        logits[:, :2], targets, weight=torch.tensor([10 / 18, 10 / 2]), label_smoothing=0.1
    )
    assert weighted(logits[:, :2], targets) == pytest.approx(both)


def test_trivial_augment_sits_after_the_crops_and_before_the_normalisation():
    steps = [type(t) for t in train_transform(32, trivial=True).transforms]
    assert steps.index(v2.TrivialAugmentWide) == steps.index(v2.RandomHorizontalFlip) + 1
    assert steps.index(v2.TrivialAugmentWide) < steps.index(v2.ToDtype)
    assert v2.TrivialAugmentWide not in [type(t) for t in train_transform(32).transforms]
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    assert train_transform(32, trivial=True)(image).shape == (3, 32, 32)
