"""What every rule of ``trainlib.rules`` shares: its verdict, and reading a trial's tensors, their
saved reductions and the loss by mode (smdebug's ``Rule`` underneath)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainlib import smdebug_support

if smdebug_support.available():
    from smdebug.exceptions import TensorUnavailableForStep
    from smdebug.rules.rule import Rule
else:  # without smdebug there is no trial to judge, and no rule is made
    Rule = object  # type: ignore[assignment,misc]


@dataclass
class Verdict:
    rule: str
    status: str
    step: int | None
    message: str


class DroptrainRule(Rule):
    """Shared plumbing: the first triggering step's explanation, and loss series by mode."""

    explanation = ""

    def __init__(self, base_trial: Any, **params: Any):
        super().__init__(base_trial, action_str="")
        self.params = params
        self.message = ""

    def _tensors(self, collection: str) -> list[str]:
        return self.base_trial.tensor_names(collection=collection)

    def _value(self, name: str, step: int) -> np.ndarray | None:
        """The full tensor, or ``None`` where the step saved none (or only its reductions)."""
        tensor = self.base_trial.tensor(name)
        if step not in tensor.steps():
            return None
        try:
            return tensor.value(step)
        except TensorUnavailableForStep:
            return None

    def _reductions(self, name: str, step: int) -> dict[tuple[str, bool], float]:
        """The reductions saved for the step, ``{(name, abs): value}``; empty where none were."""
        tensor = self.base_trial.tensor(name)
        if step not in tensor.steps():
            return {}
        return {
            key: float(np.asarray(value)) for key, value in tensor.reduction_values(step).items() if value is not None
        }

    def _reduction(self, name: str, step: int, reduction: str, abs: bool) -> float | None:
        """One reduction: as saved, else computed from the full tensor; ``None`` when neither exists."""
        saved = self._reductions(name, step).get((reduction, abs))
        if saved is not None:
            return saved
        value = self._value(name, step)
        if value is None or not np.asarray(value).size:
            return None
        value = np.abs(value) if abs else np.asarray(value)
        return float({"mean": np.mean, "max": np.max, "min": np.min, "variance": np.var}[reduction](value))

    def _mode(self, step: int):
        return self.base_trial.mode(step)

    def _loss(self, step: int) -> float | None:
        for name in self._tensors("losses"):
            value = self._value(name, step)
            if value is not None:
                return float(np.mean(value))
        return None

    def ok_message(self) -> str:
        return self.explanation
