"""The smdebug hook, when SageMaker Debugger asks for one or ``--debug-out`` is given.

smdebug is optional: the PyTorch 2.x training containers no longer ship it
(``training/requirements.txt`` installs it, ``smdebug_support`` makes it work there), and a job
without it still trains. The hook is registered on the module that is actually trained (the head
alone when the backbone is frozen and its features are cached), so it works with a frozen backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from trainlib import smdebug_support

log = logging.getLogger(__name__)

# Where SageMaker writes the DebugHookConfig of a training job.
SAGEMAKER_HOOK_CONFIG = Path("/opt/ml/input/config/debughookconfig.json")
DEFAULT_COLLECTIONS = ("losses", "weights", "gradients", "biases", "relu_input")
# The gradients again, as magnitudes only, at the regular interval (VanishingGradient, ExplodingTensor).
GRADIENT_STATS = "gradient_stats"


class NullHook:
    """Stands in when no hook is wanted, so the training loop never branches on it."""

    out_dir = None

    def set_mode(self, mode: str) -> None:
        pass

    def close(self) -> None:
        pass


def create_hook(
    model: nn.Module,
    loss_fn: nn.Module,
    debug_out: Path | None,
    total_steps: int = 100,
    hook_config: Path = SAGEMAKER_HOOK_CONFIG,
) -> Any:
    """A registered smdebug hook, or a ``NullHook`` when none is asked for or smdebug is absent.

    What is saved follows what the rules read, at the least cost: full tensors are saved only
    where a rule needs a distribution (gradients in the first 3 training steps, for the
    initialisation rule); everywhere else a few numbers per tensor stand for it. Losses every
    step; gradients' mean and largest magnitude about 10 times; ReLU inputs' variances in the first
    3 training steps; weights' and biases' magnitudes at the start, the middle and the end (the
    final weights are in the model artifact). Full tensors everywhere cost ResNet-18 800 MB per
    job at 64 px, and a full fine-tune of ResNet-50 several GB.
    """
    if debug_out is None and not hook_config.is_file():
        return NullHook()
    if not smdebug_support.available():
        return NullHook()
    import smdebug.pytorch as smd

    if debug_out is not None:

        def train_only(**when) -> Any:
            never = smd.SaveConfigMode(save_steps=[], start_step=0, end_step=0)
            return smd.SaveConfig(
                mode_save_configs={
                    mode: smd.SaveConfigMode(**when) if mode == smd.modes.TRAIN else never for mode in smd.modes
                }
            )

        magnitudes = smd.ReductionConfig(abs_reductions=["mean", "max"])
        hook = smd.Hook(
            out_dir=str(debug_out),
            save_config=smd.SaveConfig(save_interval=max(1, total_steps // 10)),
            include_collections=[*DEFAULT_COLLECTIONS, GRADIENT_STATS],
        )
        hook.get_collection("losses").save_config = smd.SaveConfig(save_interval=1)
        hook.get_collection("gradients").save_config = train_only(save_steps=[0, 1, 2])
        stats = hook.get_collection(GRADIENT_STATS)
        stats.include("^gradient/")
        stats.reduction_config = magnitudes
        stats.save_config = train_only(save_interval=max(1, total_steps // 10))
        relu = hook.get_collection("relu_input")
        relu.include(".*relu_input")
        relu.reduction_config = smd.ReductionConfig(reductions=["variance"])
        relu.save_config = train_only(save_steps=[0, 1, 2])
        milestones = sorted({0, total_steps // 2, max(0, total_steps - 1)})
        for name in ("weights", "biases"):
            hook.get_collection(name).reduction_config = magnitudes
            hook.get_collection(name).save_config = train_only(save_steps=milestones)
    else:
        hook = smd.Hook.create_from_json_file(str(hook_config))
    hook.register_module(model)
    hook.register_loss(loss_fn)
    return _SmdebugHook(hook, smd.modes, Path(hook.out_dir))


class _SmdebugHook:
    """Maps the loop's plain ``"train"``/``"eval"`` modes onto smdebug's."""

    def __init__(self, hook: Any, modes: Any, out_dir: Path):
        self._hook = hook
        self._modes = {"train": modes.TRAIN, "eval": modes.EVAL}
        self.out_dir = out_dir

    def set_mode(self, mode: str) -> None:
        self._hook.set_mode(self._modes[mode])

    def close(self) -> None:
        self._hook.close()
