"""Each debugger rule on crafted tensors that must trigger it, and on ones that must not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlib import rules


def write_trial(out_dir, steps, reductions_only=False):
    """``steps``: a list of ``(mode, {tensor name: value})``; losses are named *_output_0, gradients gradient/*.
    ``reductions_only``: gradients, weights and ReLU inputs saved as the job's hook saves most of
    them, as a few numbers per tensor (magnitudes, variances) instead of the full tensor."""
    import smdebug.pytorch as smd

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x

    class ReducingHook(smd.Hook):
        """smdebug writes ``save_tensor`` values raw whatever their collection says; the tensors of a
        registered module go through ``_write_for_tensor``, which honours reduction configs. The
        crafted tensors take that path here, so they are saved as the job's own are."""

        def _save_custom_tensors_post_step(self):
            for name, (value, collection) in self.custom_tensors_to_save.items():
                c = self.collection_manager.get(collection, create=True)
                c.add_tensor_name(name)
                self._write_for_tensor(name, value, [c])
            self.custom_tensors_to_save.clear()

    probe = Probe()
    hook = (ReducingHook if reductions_only else smd.Hook)(
        out_dir=str(out_dir),
        save_config=smd.SaveConfig(save_interval=1),
        include_collections=["losses", "gradients", "weights", "relu_input"],
    )
    hook.get_collection("relu_input").include(".*relu_input")
    if reductions_only:
        for name in ("gradients", "weights"):
            hook.get_collection(name).reduction_config = smd.ReductionConfig(abs_reductions=["mean", "max"])
        hook.get_collection("relu_input").reduction_config = smd.ReductionConfig(reductions=["variance"])
    hook.register_module(probe)
    # smdebug writes save_tensor values when the next step opens (the forward pre-hook), under that
    # step's number: so each step's tensors are saved first, then the forward call opens the step.
    for mode, tensors in steps:
        hook.set_mode(smd.modes.TRAIN if mode == "train" else smd.modes.EVAL)
        for name, value in tensors.items():
            collection = (
                "losses"
                if name.endswith("_output_0")
                else "gradients"
                if name.startswith("gradient/")
                else "relu_input"
                if "relu_input" in name
                else "weights"
            )
            hook.save_tensor(name, torch.as_tensor(np.asarray(value, dtype=np.float32)), collection)
        probe(torch.zeros(1))
    hook.close()
    return out_dir


def healthy_gradient(rng):
    return rng.normal(0, 0.01, (8, 8))


def epochs(train_losses, valid_losses, per_epoch=4, rng=None, extra=None):
    rng = rng or np.random.default_rng(0)
    steps = []
    for train, valid in zip(train_losses, valid_losses):
        for _ in range(per_epoch):
            steps.append(
                ("train", {"loss_output_0": train, "gradient/fc.weight": healthy_gradient(rng), **(extra or {})})
            )
            train *= 0.97
        steps.append(("eval", {"loss_output_0": valid}))
    return steps


def verdict(out_dir, name):
    return next(v for v in rules.evaluate(out_dir) if v.rule == name)


HEALTHY = dict(train_losses=[2.0, 1.2, 0.8, 0.5, 0.3], valid_losses=[2.0, 1.25, 0.83, 0.52, 0.32])


def test_a_healthy_trial_trips_nothing(tmp_path):
    relus = {
        "layer1_relu_input": np.random.default_rng(1).normal(0, 1, 64),
        "layer2_relu_input": np.random.default_rng(2).normal(0, 2, 64),
    }
    out = write_trial(tmp_path, epochs(**HEALTHY, extra=relus))
    verdicts = rules.evaluate(out)
    assert [v.rule for v in verdicts] == [r.__name__ for r in rules.RULES]
    assert all(v.status == "NoIssuesFound" for v in verdicts), [
        (v.rule, v.message) for v in verdicts if v.status != "NoIssuesFound"
    ]


def test_a_finished_trial_is_judged_without_waiting_for_late_files(tmp_path, monkeypatch):
    """smdebug lists a finished trial's folder once more after a pause, for files an S3 listing shows late;
    the job's own folder, its hook closed, has none to wait for."""
    import time

    out = write_trial(tmp_path, epochs(**HEALTHY))
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    assert all(v.status == "NoIssuesFound" for v in rules.evaluate(out))
    assert sum(pauses) == 0, pauses


def test_vanishing_gradient(tmp_path):
    steps = epochs(**HEALTHY)
    steps[6][1]["gradient/fc.weight"] = np.full((8, 8), 1e-9) * np.random.default_rng(0).normal(size=(8, 8))
    v = verdict(write_trial(tmp_path, steps), "VanishingGradient")
    assert v.status == "IssuesFound" and "gradient/fc.weight" in v.message and v.step is not None


def test_exploding_tensor(tmp_path):
    steps = epochs(**HEALTHY)
    gradient = healthy_gradient(np.random.default_rng(3))
    gradient[2, 3] = np.inf
    steps[3][1]["gradient/fc.weight"] = gradient
    v = verdict(write_trial(tmp_path, steps), "ExplodingTensor")
    assert v.status == "IssuesFound" and "non-finite" in v.message


def test_overfit(tmp_path):
    v = verdict(write_trial(tmp_path, epochs([1.0, 0.6, 0.4, 0.2], [1.0, 0.9, 0.95, 1.1])), "Overfit")
    assert v.status == "IssuesFound" and "overfitting" in v.message
    one_bad_epoch = verdict(
        write_trial(tmp_path / "b", epochs([1.0, 0.6, 0.4, 0.3], [1.0, 0.9, 0.42, 0.31])), "Overfit"
    )
    assert one_bad_epoch.status == "NoIssuesFound", "a single epoch over the threshold is within patience"


def test_overtraining(tmp_path):
    flat = epochs([0.5] * 4, [0.6] * 4, per_epoch=1)
    # Twelve training steps at one loss: the second window of five has not improved on the first.
    steps = [
        (m, {**t, "loss_output_0": 0.5 if m == "train" else 0.6}) for m, t in epochs([0.5] * 6, [0.6] * 6, per_epoch=2)
    ]
    v = verdict(write_trial(tmp_path, steps), "Overtraining")
    assert v.status == "IssuesFound" and "stopped improving" in v.message
    assert flat  # fewer than patience_train steps without improvement:
    assert verdict(write_trial(tmp_path / "b", flat), "Overtraining").status == "NoIssuesFound"


def test_poor_weight_initialization(tmp_path):
    zero = epochs(**HEALTHY)
    for _, tensors in zero:
        if "gradient/fc.weight" in tensors:
            tensors["gradient/fc.weight"] = np.zeros((8, 8))
    v = verdict(write_trial(tmp_path, zero), "PoorWeightInitialization")
    assert v.status == "IssuesFound" and "nearly all equal" in v.message
    skewed = epochs(
        **HEALTHY,
        extra={
            "a_relu_input": np.random.default_rng(1).normal(0, 0.01, 64),
            "b_relu_input": np.random.default_rng(2).normal(0, 5, 64),
        },
    )
    v = verdict(write_trial(tmp_path / "b", skewed), "PoorWeightInitialization")
    assert v.status == "IssuesFound" and "variances" in v.message


def test_loss_not_decreasing(tmp_path):
    rng = np.random.default_rng(0)
    stuck = [
        ("train", {"loss_output_0": 1.386 + rng.normal(0, 0.001), "gradient/fc.weight": healthy_gradient(rng)})
        for _ in range(30)
    ]
    v = verdict(write_trial(tmp_path, stuck), "LossNotDecreasing")
    assert v.status == "IssuesFound" and "over the last 10 steps" in v.message
    falling = [
        ("train", {"loss_output_0": 2.0 * 0.97**i, "gradient/fc.weight": healthy_gradient(rng)}) for i in range(30)
    ]
    assert verdict(write_trial(tmp_path / "b", falling), "LossNotDecreasing").status == "NoIssuesFound"


def test_unreadable_trial_is_an_error_verdict(tmp_path):
    verdicts = rules.evaluate(tmp_path / "nothing-here")
    assert {v.status for v in verdicts} == {"Error"}


def test_rules_judge_tensors_saved_as_reductions_only(tmp_path):
    """What the job's hook saves for most steps: magnitudes and variances, never the full tensors."""
    from smdebug.exceptions import TensorUnavailableForStep
    from smdebug.trials import create_trial

    relus = {
        "layer1_relu_input": np.random.default_rng(1).normal(0, 1, 64),
        "layer2_relu_input": np.random.default_rng(2).normal(0, 2, 64),
    }
    healthy = write_trial(tmp_path / "healthy", epochs(**HEALTHY, extra=relus), reductions_only=True)
    with pytest.raises(TensorUnavailableForStep):
        create_trial(str(healthy)).tensor("gradient/fc.weight").value(0)
    assert {v.rule: v.status for v in rules.evaluate(healthy)} == {r.__name__: "NoIssuesFound" for r in rules.RULES}

    vanishing = epochs(**HEALTHY)
    vanishing[6][1]["gradient/fc.weight"] = np.full((8, 8), 1e-9)
    v = verdict(write_trial(tmp_path / "vanishing", vanishing, reductions_only=True), "VanishingGradient")
    assert v.status == "IssuesFound" and "1.00e-09" in v.message

    exploding = epochs(**HEALTHY)
    gradient = healthy_gradient(np.random.default_rng(3))
    gradient[2, 3] = np.nan
    exploding[3][1]["gradient/fc.weight"] = gradient
    v = verdict(write_trial(tmp_path / "exploding", exploding, reductions_only=True), "ExplodingTensor")
    assert v.status == "IssuesFound" and "gradient/fc.weight" in v.message and v.step == 3

    skewed = epochs(
        **HEALTHY,
        extra={
            "a_relu_input": np.random.default_rng(1).normal(0, 0.01, 64),
            "b_relu_input": np.random.default_rng(2).normal(0, 5, 64),
        },
    )
    v = verdict(write_trial(tmp_path / "skewed", skewed, reductions_only=True), "PoorWeightInitialization")
    assert v.status == "IssuesFound" and "variances" in v.message
