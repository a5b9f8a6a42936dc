"""Debugger rules evaluated by the job itself over its own smdebug trial.

SageMaker's built-in rules run in rule containers that are closed to new accounts; these are the
same checks as smdebug ``Rule`` subclasses, with the built-ins' documented default parameters, run
by smdebug's ``invoke_rule`` over the trial the job's hook wrote. Each yields a verdict::

    {"rule": "VanishingGradient", "status": "NoIssuesFound" | "IssuesFound" | "Error", "step": 12, "message": "..."}

Loss-based rules read the ``losses`` collection (TRAIN and EVAL modes); an epoch is a run of TRAIN
steps followed by its EVAL steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from trainlib import smdebug_support
from trainlib.rule_base import DroptrainRule, Verdict

log = logging.getLogger(__name__)

if smdebug_support.available():
    from smdebug.core.modes import ModeKeys
    from smdebug.exceptions import RuleEvaluationConditionMet, SMDebugError
    from smdebug.rules.rule_invoker import invoke_rule
    from smdebug.trials import create_trial
else:  # without smdebug there is no trial to judge
    create_trial = None


class VanishingGradient(DroptrainRule):
    """Mean absolute gradient below ``threshold`` (default 1e-7)."""

    explanation = "gradients kept a healthy magnitude"

    def __init__(self, base_trial: Any, threshold: float = 0.0000001):
        super().__init__(base_trial, threshold=threshold)
        self.threshold = threshold

    def invoke_at_step(self, step: int) -> bool:
        for name in self._tensors("gradients"):
            magnitude = self._reduction(name, step, "mean", abs=True)
            if magnitude is not None and magnitude < self.threshold:
                self.message = (
                    f"the mean absolute gradient of {name} fell to {magnitude:.2e} "
                    f"(threshold {self.threshold:g}) at step {step}: learning has stalled"
                )
                return True
        return False


class ExplodingTensor(DroptrainRule):
    """Any saved tensor with NaN or infinite values."""

    explanation = "no tensor held a NaN or an infinite value"

    def __init__(self, base_trial: Any, only_nan: bool = False):
        super().__init__(base_trial, only_nan=only_nan)
        self.only_nan = only_nan

    def invoke_at_step(self, step: int) -> bool:
        for name in self.base_trial.tensor_names():
            value = self._value(name, step)
            if value is None:
                # Saved as magnitudes only: a NaN or an infinity anywhere shows in its mean and maximum.
                bad_reductions = [
                    r
                    for r, v in self._reductions(name, step).items()
                    if (np.isnan(v) if self.only_nan else not np.isfinite(v))
                ]
                if bad_reductions:
                    self.message = (
                        f"{name} held non-finite values at step {step} "
                        f"(its {bad_reductions[0][0]} is not finite): lower the learning rate"
                    )
                    return True
                continue
            if not np.issubdtype(np.asarray(value).dtype, np.floating):
                continue
            bad = np.isnan(value) if self.only_nan else ~np.isfinite(value)
            if bad.any():
                self.message = f"{name} held {int(bad.sum())} non-finite values at step {step}: lower the learning rate"
                return True
        return False


def _epochs(rule: DroptrainRule, up_to: int) -> list[tuple[float, float, int]]:
    """``(mean train loss, mean validation loss, last step)`` per finished epoch up to ``up_to``."""
    epochs, train, valid, last = [], [], [], None
    for step in sorted(s for s in rule.base_trial.steps() if s <= up_to):
        loss = rule._loss(step)
        if loss is None:
            continue
        if rule._mode(step) == ModeKeys.TRAIN:
            if valid:
                epochs.append((float(np.mean(train)), float(np.mean(valid)), last))
                train, valid = [], []
            train.append(loss)
        elif rule._mode(step) == ModeKeys.EVAL and train:
            valid.append(loss)
            last = step
    if train and valid:
        epochs.append((float(np.mean(train)), float(np.mean(valid)), last))
    return epochs


class Overfit(DroptrainRule):
    """Validation loss above training loss by more than ``ratio_threshold`` (0.1) for more than
    ``patience`` (1) consecutive epochs, from ``start_step`` (0)."""

    explanation = "validation loss stayed close to training loss"

    def __init__(self, base_trial: Any, start_step: int = 0, patience: int = 1, ratio_threshold: float = 0.1):
        super().__init__(base_trial, start_step=start_step, patience=patience, ratio_threshold=ratio_threshold)
        self.start_step, self.patience, self.ratio_threshold = start_step, patience, ratio_threshold

    def invoke_at_step(self, step: int) -> bool:
        if step < self.start_step:
            return False
        epochs = [e for e in _epochs(self, step) if e[2] >= self.start_step]
        if not epochs or epochs[-1][2] != step:
            return False  # judged once per epoch, at its last validation step
        streak = 0
        for train, valid, _ in epochs:
            streak = streak + 1 if train > 0 and (valid - train) / train > self.ratio_threshold else 0
        if streak > self.patience:
            train, valid, _ = epochs[-1]
            self.message = (
                f"validation loss {valid:.4f} exceeded training loss {train:.4f} by more than "
                f"{self.ratio_threshold:.0%} for {streak} epochs in a row: the model is overfitting; "
                "add augmentation or weight decay, or stop earlier"
            )
            return True
        return False


class Overtraining(DroptrainRule):
    """Training loss improving by less than ``delta`` (0.01) over ``patience_train`` (5) training
    steps, or validation loss over ``patience_validation`` (10) validation steps. Losses of single
    batches are noisy, so each window's mean is compared with the mean of the window before."""

    explanation = "training and validation losses kept improving"

    def __init__(self, base_trial: Any, patience_train: int = 5, patience_validation: int = 10, delta: float = 0.01):
        super().__init__(
            base_trial, patience_train=patience_train, patience_validation=patience_validation, delta=delta
        )
        self.patience = {ModeKeys.TRAIN: patience_train, ModeKeys.EVAL: patience_validation}
        self.delta = delta
        self.losses: dict[Any, list[float]] = {ModeKeys.TRAIN: [], ModeKeys.EVAL: []}

    def invoke_at_step(self, step: int) -> bool:
        loss = self._loss(step)
        mode = self._mode(step)
        if loss is None or mode not in self.patience:
            return False
        losses, n = self.losses[mode], self.patience[mode]
        losses.append(loss)
        if len(losses) < 2 * n or len(losses) % n:
            return False
        before, now = float(np.mean(losses[-2 * n : -n])), float(np.mean(losses[-n:]))
        if before - now < self.delta:
            which = "training" if mode == ModeKeys.TRAIN else "validation"
            self.message = (
                f"{which} loss improved by only {before - now:.4f} (< {self.delta}) over the last {n} steps, "
                f"to {now:.4f}: the model has stopped improving; use fewer epochs"
            )
            return True
        return False


class PoorWeightInitialization(DroptrainRule):
    """In the first ``steps`` (10) steps: ReLU-input variances across layers differ by more than
    ``threshold`` (10) times, or a gradient's 5th–95th percentile spread is under ``distribution_range`` (0.001)."""

    explanation = "activations and gradients were well spread from the start"

    def __init__(
        self,
        base_trial: Any,
        activation_inputs_regex: str = ".*relu_input",
        threshold: float = 10.0,
        distribution_range: float = 0.001,
        patience: int = 5,
        steps: int = 10,
    ):
        super().__init__(
            base_trial,
            activation_inputs_regex=activation_inputs_regex,
            threshold=threshold,
            distribution_range=distribution_range,
            patience=patience,
            steps=steps,
        )
        import re

        self.regex = re.compile(activation_inputs_regex, re.IGNORECASE)
        self.threshold, self.distribution_range, self.steps = threshold, distribution_range, steps
        self.first_step: int | None = None

    def invoke_at_step(self, step: int) -> bool:
        if self.first_step is None:
            self.first_step = step
        if step - self.first_step >= self.steps or self._mode(step) != ModeKeys.TRAIN:
            return False
        variances = {}
        for name in self.base_trial.tensor_names():
            if self.regex.match(name):
                variance = self._reduction(name, step, "variance", abs=False)
                if variance is not None:
                    variances[name] = variance
        if variances:
            high, low = max(variances.values()), min(variances.values())
            if high == 0 or (low == 0 or high / low > self.threshold):
                self.message = (
                    f"ReLU input variances range from {low:.3g} to {high:.3g} across layers at step {step}: "
                    "poor weight initialisation"
                )
                return True
        for name in self._tensors("gradients"):
            value = self._value(name, step)
            if value is not None and value.size > 1:
                spread = float(np.percentile(value, 95) - np.percentile(value, 5))
                if spread < self.distribution_range:
                    self.message = (
                        f"the gradients of {name} are nearly all equal (5th–95th percentile spread {spread:.2e}) "
                        f"at step {step}: poor weight initialisation (all-zero or constant weights?)"
                    )
                    return True
        return False


class LossNotDecreasing(DroptrainRule):
    """The mean training loss over a window of ``num_steps`` (10) saved steps fails to drop by
    ``diff_percent`` (0.1 %) against the window before, or rises by more than
    ``increase_threshold_percent`` (5 %)."""

    explanation = "the training loss kept decreasing"

    def __init__(
        self, base_trial: Any, num_steps: int = 10, diff_percent: float = 0.1, increase_threshold_percent: float = 5
    ):
        super().__init__(
            base_trial,
            num_steps=num_steps,
            diff_percent=diff_percent,
            increase_threshold_percent=increase_threshold_percent,
        )
        self.num_steps, self.diff_percent, self.increase = num_steps, diff_percent, increase_threshold_percent
        self.losses: list[float] = []

    def invoke_at_step(self, step: int) -> bool:
        loss = self._loss(step)
        if loss is None or self._mode(step) != ModeKeys.TRAIN:
            return False
        self.losses.append(loss)
        n = self.num_steps
        if len(self.losses) < 2 * n or len(self.losses) % n:
            return False
        before, now = float(np.mean(self.losses[-2 * n : -n])), float(np.mean(self.losses[-n:]))
        change = (before - now) / abs(before) * 100 if before else 0.0
        if change < self.diff_percent:
            direction = f"rose by {-change:.1f}%" if change < -self.increase else f"fell only {change:.2f}%"
            self.message = (
                f"the training loss {direction} over the last {n} steps (to {now:.4f}) at step {step}: "
                "check the learning rate and the labels"
            )
            return True
        return False


RULES = (VanishingGradient, ExplodingTensor, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing)


def evaluate(out_dir: Path) -> list[Verdict]:
    """Every rule over the trial in ``out_dir``: all its steps, or mid-training those written so far."""
    if create_trial is None:
        return [Verdict(r.__name__, "Error", None, "smdebug is not installed: no tensors were saved") for r in RULES]
    # smdebug waits for collection files until it sees the training end: never wait on a trial
    # that has none yet.
    if not any(Path(out_dir).glob("collections/*/*collections.json")):
        return [Verdict(r.__name__, "Error", None, f"no debugger data in {out_dir}") for r in RULES]
    try:
        trial = create_trial(str(out_dir))
        steps = trial.steps()
    except (SMDebugError, OSError, ValueError) as exc:
        return [Verdict(r.__name__, "Error", None, f"the debugger trial could not be read: {exc}") for r in RULES]
    if not steps:
        return [Verdict(r.__name__, "Error", None, "the debugger saved no steps") for r in RULES]
    verdicts = []
    for rule_class in RULES:
        rule = rule_class(trial)
        try:
            # Step by saved step: invoke_rule waits for every integer step, and steps saved at an
            # interval leave gaps that a trial still being written would wait on forever.
            for step in steps:
                invoke_rule(rule, start_step=step, end_step=step + 1, raise_eval_cond=True)
            verdicts.append(Verdict(rule_class.__name__, "NoIssuesFound", None, rule.ok_message()))
        except RuleEvaluationConditionMet as exc:
            verdicts.append(Verdict(rule_class.__name__, "IssuesFound", int(exc.step), rule.message))
        except (SMDebugError, ValueError, KeyError, IndexError) as exc:
            verdicts.append(Verdict(rule_class.__name__, "Error", None, f"{type(exc).__name__}: {exc}"))
    return verdicts
