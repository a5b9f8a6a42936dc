"""The smdebug hook, when SageMaker Debugger asks for one or ``--debug-out`` is given.

smdebug is optional: the PyTorch 2.x training containers no longer ship it, and a job without it
still trains. The hook is registered on the module that is actually trained (the head alone when
the backbone is frozen and its features are cached), so it works with a frozen backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

# Where SageMaker writes the DebugHookConfig of a training job.
SAGEMAKER_HOOK_CONFIG = Path("/opt/ml/input/config/debughookconfig.json")
DEFAULT_COLLECTIONS = ("losses", "weights", "gradients", "biases", "relu_input")


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
    """What is saved, and how often, follows what the rules read and what it costs: losses every
    step (scalars; the loss rules need them all); gradients about 10 times; ReLU inputs, the largest
    tensors, in the first 3 steps (where the initialisation rule looks); weights and biases at the
    start, the middle and the end of the job."""
    """A registered smdebug hook, or a ``NullHook`` when none is asked for or smdebug is absent."""
    if debug_out is None and not hook_config.is_file():
        return NullHook()
    try:
        import smdebug.pytorch as smd
    except ImportError as exc:
        log.warning("smdebug is not installed (%s): training without the debugger hook", exc)
        return NullHook()
    if debug_out is not None:
        hook = smd.Hook(
            out_dir=str(debug_out),
            save_config=smd.SaveConfig(save_interval=max(1, total_steps // 10)),
            include_collections=list(DEFAULT_COLLECTIONS),
        )
        relu = hook.get_collection("relu_input")
        relu.include(".*relu_input")
        relu.save_config = smd.SaveConfig(save_steps=[0, 1, 2])
        milestones = sorted({0, total_steps // 2, max(0, total_steps - 1)})
        for name in ("weights", "biases"):
            hook.get_collection(name).save_config = smd.SaveConfig(save_steps=milestones)
        hook.get_collection("losses").save_config = smd.SaveConfig(save_interval=1)
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
