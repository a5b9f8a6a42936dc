"""``train.py``'s command line: hyperparameters as SageMaker passes them, paths from its ``SM_*`` variables.

SageMaker's SDK JSON-encodes string hyperparameters (``"adam"``): both forms are accepted.
``--_*`` and ``--sagemaker_*`` flags (what a tuning job adds) are not ours and are ignored; any
other unknown flag is an error, so a misspelt hyperparameter never trains with a default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from trainlib.archives import DEFAULT_MAX_BYTES
from trainlib.balance import CHOICES as CLASS_BALANCE
from trainlib.models import ARCHS

DESCRIPTION = "droptrain's training entry point: SageMaker script mode, and plain ``python train.py`` locally."
# The final training job is named <run-id>-final (chalice_app/names.py final_job_name; the two are
# kept equal by tests/test_parity.py, since the training code cannot import the orchestrator's).
FINAL_JOB_SUFFIX = "-final"
# The tunable and static hyperparameters (docs/architecture.md), as flag names. Recorded in model.json.
HYPERPARAMETERS = (
    "lr",
    "batch-size",
    "epochs",
    "weight-decay",
    "optimizer",
    "arch",
    "weights",
    "train-mode",
    "image-size",
    "augment",
    "seed",
    "class-balance",
    "target-precision",
    "min-confidence",
)
# SageMaker adds these to a tuning job's children; they are not ours to interpret.
_FOREIGN_PREFIXES = ("--_", "--sagemaker_")


def _text(value: str) -> str:
    """SageMaker's SDK JSON-encodes string hyperparameters (``"adam"``); accept both forms."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def _word(value: str) -> str:
    """One of a flag's choices, in any case: AWS's training toolkit passes each hyperparameter through
    ``json.loads`` and then ``str``, so ``"true"`` reaches the script as ``True``."""
    return _text(value).lower()


def _int(value: str) -> int:
    number = float(_text(value))
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    return int(number)


def _float(value: str) -> float:
    number = float(_text(value))
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def _share(value: str) -> float:
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value!r}")
    return number


def _container_path(value: str) -> Path:
    """A ``/opt/ml/...`` path, under ``$SAGEMAKER_BASE_DIR`` where the training toolkit was relocated
    there (the local runtime does), as the toolkit itself relocates ``/opt/ml``."""
    value = _text(value)
    base = os.environ.get("SAGEMAKER_BASE_DIR")
    if base and (value == "/opt/ml" or value.startswith("/opt/ml/")):
        return Path(base) / value[len("/opt/ml") :].lstrip("/")
    return Path(value)


def _env_path(name: str, fallback: str | None) -> Path | None:
    value = os.environ.get(name, fallback)
    return Path(value) if value else None


def _default_run_id() -> str:
    job = os.environ.get("TRAINING_JOB_NAME", "")
    return job.removesuffix(FINAL_JOB_SUFFIX) if job else "local"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _hyperparameters(p.add_argument_group("hyperparameters"))
    _data(p.add_argument_group("data"))
    outputs = p.add_argument_group("outputs")
    _outputs(outputs)
    _diagnostics(outputs)
    _device(p.add_argument_group("device"))
    return p


def _hyperparameters(group: Any) -> None:
    """What a tuning job tunes or passes as static hyperparameters."""
    group.add_argument("--lr", type=_float, default=1e-3, help="learning rate")
    group.add_argument(
        "--batch-size",
        type=_int,
        default=32,
        help="images per training step; under torchrun, of all processes together (each takes its share)",
    )
    group.add_argument("--epochs", type=_int, default=5, help="passes over the training split")
    group.add_argument("--weight-decay", type=_float, default=1e-4, help="L2 weight decay")
    group.add_argument(
        "--class-balance",
        type=_word,
        default="auto",
        choices=CLASS_BALANCE,
        help="weights: weigh each class's loss by its inverse frequency; sampler: draw balanced batches; "
        "auto: weights when the largest training class is 3 times the smallest or more, else off",
    )
    group.add_argument(
        "--target-precision",
        type=_share,
        default=None,
        help="abstain below each class's confidence threshold chosen on the validation split for this "
        "precision (0-1; unset: no class thresholds)",
    )
    group.add_argument(
        "--min-confidence",
        type=_share,
        default=0.0,
        help="abstain when the best class's calibrated probability is below this (0-1)",
    )
    group.add_argument(
        "--optimizer",
        type=_word,
        default="adamw",
        choices=["adam", "adamw", "sgd"],
        help="optimizer (sgd uses Nesterov momentum 0.9)",
    )
    group.add_argument(
        "--arch", type=_word, default="resnet18", choices=list(ARCHS), help="torchvision ResNet architecture"
    )
    group.add_argument(
        "--weights",
        type=_word,
        default="imagenet",
        choices=["imagenet", "none"],
        help="start from ImageNet weights (torch hub cache, else download) or from scratch",
    )
    group.add_argument(
        "--train-mode",
        type=_word,
        default="head",
        choices=["head", "full"],
        help="head: frozen backbone, train the classifier only; full: fine-tune everything",
    )
    group.add_argument("--image-size", type=_int, default=224, help="side of the square crop fed to the network")
    group.add_argument(
        "--augment",
        type=_word,
        default="auto",
        choices=["auto", "on", "off"],
        help="random crops and flips; auto = off in head mode (frozen features are computed once and "
        "reused), on in full mode",
    )
    group.add_argument("--seed", type=_int, default=42, help="seed for splits, shuffling and initialisation")


def _data(group: Any) -> None:
    """The channels read and how the dataset is split."""
    group.add_argument(
        "--data-dir",
        type=Path,
        default=_env_path("SM_CHANNEL_TRAINING", None),
        help="the training channel: a dataset folder or one archive (default $SM_CHANNEL_TRAINING)",
    )
    group.add_argument(
        "--baseline-dir",
        type=Path,
        default=_env_path("SM_CHANNEL_BASELINE", None),
        help="the project's serving model (a model.tar.gz, or its extracted folder), evaluated on the "
        "same held-out split for the promotion gate (default $SM_CHANNEL_BASELINE; none: no comparison)",
    )
    group.add_argument(
        "--audit-dir",
        type=Path,
        default=_env_path("SM_CHANNEL_AUDIT", None),
        help="the dataset audit's audit.json (AUDIT_FIX): its cross-split duplicates are dropped from "
        "valid and test, never from train (default $SM_CHANNEL_AUDIT; none: nothing dropped)",
    )
    group.add_argument(
        "--valid-fraction",
        type=_float,
        default=0.1,
        help="share of each class carved from train/ when valid/ is missing",
    )
    group.add_argument(
        "--test-fraction", type=_float, default=0.1, help="share of each class carved from train/ when test/ is missing"
    )
    group.add_argument(
        "--max-extract-bytes",
        type=_int,
        default=DEFAULT_MAX_BYTES,
        help="refuse archives whose content is larger than this",
    )
    group.add_argument(
        "--workers", type=_int, default=-1, help="data-loading worker processes; -1 picks for the device"
    )
    group.add_argument(
        "--feature-cache",
        type=Path,
        default=_env_path("DROPTRAIN_FEATURE_CACHE", None),
        help="head mode: keep the frozen backbone's features in this folder, so that other runs on the "
        "same images and backbone (a tuning job's trials) load them instead of computing them "
        "(default $DROPTRAIN_FEATURE_CACHE; none: off)",
    )


def _outputs(group: Any) -> None:
    """What the job writes and where."""
    group.add_argument(
        "--model-dir",
        type=Path,
        default=_env_path("SM_MODEL_DIR", "model"),
        help="where the model artifact is written (default $SM_MODEL_DIR)",
    )
    group.add_argument(
        "--output-data-dir",
        type=Path,
        default=_env_path("SM_OUTPUT_DATA_DIR", "output"),
        help="where evaluation.json is written (default $SM_OUTPUT_DATA_DIR)",
    )
    group.add_argument(
        "--checkpoint-dir",
        type=_container_path,
        default=_container_path("/opt/ml/checkpoints"),
        help="per-epoch checkpoints, resumed when they match this run, in a folder named after the job "
        "($TRAINING_JOB_NAME) when there is one (SageMaker syncs this folder for spot training)",
    )
    group.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints and resume from none")
    group.add_argument(
        "--run-id",
        type=_text,
        default=_default_run_id(),
        help="run id recorded in model.json (default: the job name without -final)",
    )
    group.add_argument(
        "--serving-gpus",
        type=_int,
        default=0,
        choices=[0, 1],
        help="GPUs the Ray Serve deployment asks for in the artifact's config.yaml: 1 for a GPU "
        "inference instance type, else 0",
    )


def _diagnostics(group: Any) -> None:
    """The debugger hook, its rules, profiling and where their reports go."""
    group.add_argument(
        "--debug-out",
        type=_container_path,
        default=None,
        help="save smdebug tensors here (SageMaker's DebugHookConfig also turns the hook on)",
    )
    group.add_argument(
        "--profile",
        type=_word,
        default="auto",
        choices=["auto", "on", "off"],
        help="system metrics, step-time breakdown, torch.profiler window and the HTML report; "
        "auto = with the debugger hook",
    )
    group.add_argument(
        "--stop-on-rule-issues",
        type=_word,
        default="false",
        choices=["true", "false"],
        help="evaluate the debugger rules after every epoch and stop the job at the first issue",
    )
    group.add_argument(
        "--reports-uri",
        type=_text,
        default=None,
        help="s3:// prefix to upload the report and rule verdicts to, when running on SageMaker",
    )


def _device(group: Any) -> None:
    """Where it trains."""
    group.add_argument(
        "--num-gpus",
        type=_int,
        default=int(os.environ.get("SM_NUM_GPUS", "-1")),
        help="0 trains on the CPU; otherwise one GPU per process, several GPUs through torchrun (default $SM_NUM_GPUS)",
    )
    group.add_argument(
        "--device",
        type=_word,
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when present (with mixed precision), else CPU",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    args, unknown = parser.parse_known_args(argv)
    ours = [a for a in unknown if a.startswith("--") and not a.startswith(_FOREIGN_PREFIXES)]
    if ours:
        parser.error(f"unknown hyperparameters: {', '.join(ours)}")
    if args.data_dir is None:
        parser.error("no training data: pass --data-dir or set SM_CHANNEL_TRAINING")
    for name in ("lr", "batch_size", "epochs", "image_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.weight_decay < 0:
        parser.error("--weight-decay must not be negative")
    return args


def hyperparameters(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name.replace("-", "_")) for name in HYPERPARAMETERS}
