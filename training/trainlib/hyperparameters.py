"""``train.py``'s hyperparameters: what a tuning job tunes or passes as static hyperparameters, how each
value is read (SageMaker's SDK JSON-encodes strings; AWS's training toolkit passes each through
``json.loads``), and the defaults that depend on others (the fine-tuning recipe, the input size)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from trainlib.balance import CHOICES as CLASS_BALANCE
from trainlib.models import ARCHS, FIXED_SIZE

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
    "trivial-augment",
    "label-smoothing",
    "warmup-epochs",
)


def as_text(value: str) -> str:
    """SageMaker's SDK JSON-encodes string hyperparameters (``"adam"``); accept both forms."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def as_word(value: str) -> str:
    """One of a flag's choices, in any case: AWS's training toolkit passes each hyperparameter through
    ``json.loads`` and then ``str``, so ``"true"`` reaches the script as ``True``."""
    return as_text(value).lower()


def as_int(value: str) -> int:
    number = float(as_text(value))
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    return int(number)


def as_float(value: str) -> float:
    number = float(as_text(value))
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def as_share(value: str) -> float:
    number = as_float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value!r}")
    return number


def add_hyperparameters(group: Any) -> None:
    """What a tuning job tunes or passes as static hyperparameters."""
    group.add_argument("--lr", type=as_float, default=1e-3, help="learning rate")
    group.add_argument(
        "--batch-size",
        type=as_int,
        default=32,
        help="images per training step; under torchrun, of all processes together (each takes its share)",
    )
    group.add_argument("--epochs", type=as_int, default=5, help="passes over the training split")
    group.add_argument("--weight-decay", type=as_float, default=1e-4, help="L2 weight decay")
    group.add_argument(
        "--class-balance",
        type=as_word,
        default="auto",
        choices=CLASS_BALANCE,
        help="weights: weigh each class's loss by its inverse frequency; sampler: draw balanced batches; "
        "auto: weights when the largest training class is 3 times the smallest or more, else off",
    )
    group.add_argument(
        "--optimizer",
        type=as_word,
        default="adamw",
        choices=["adam", "adamw", "sgd"],
        help="optimizer (sgd uses Nesterov momentum 0.9)",
    )
    _model(group)
    _recipe_flags(group)
    _abstention(group)


def _model(group: Any) -> None:
    """Which network, from what, at what size, and the basic augmentation."""
    group.add_argument(
        "--arch",
        type=as_word,
        default="resnet18",
        choices=list(ARCHS),
        help="the torchvision architecture (its ImageNet weights and their preprocessing)",
    )
    group.add_argument(
        "--weights",
        type=as_word,
        default="imagenet",
        choices=["imagenet", "none"],
        help="start from ImageNet weights (torch hub cache, else download) or from scratch",
    )
    group.add_argument(
        "--train-mode",
        type=as_word,
        default="head",
        choices=["head", "full"],
        help="head: frozen backbone, train the classifier only; full: fine-tune everything",
    )
    group.add_argument(
        "--image-size",
        type=as_int,
        default=None,
        help="side of the square crop fed to the network (default: the architecture's weights' own: 224, "
        "384 for efficientnet_v2_s; vit_b_16 takes 224 only)",
    )
    group.add_argument(
        "--augment",
        type=as_word,
        default="auto",
        choices=["auto", "on", "off"],
        help="random crops and flips; auto = off in head mode (frozen features are computed once and "
        "reused), on in full mode",
    )
    group.add_argument("--seed", type=as_int, default=42, help="seed for splits, shuffling and initialisation")


def _recipe_flags(group: Any) -> None:
    """The fine-tuning recipe (full mode from ImageNet weights), as torchvision's references train: each
    on by default there and off elsewhere (a model from scratch on a few images keeps the plain loop)."""
    group.add_argument(
        "--trivial-augment",
        type=as_word,
        default="auto",
        choices=["auto", "on", "off"],
        help="TrivialAugmentWide on top of the random crops and flips; auto = on when fine-tuning "
        "(full mode, ImageNet weights)",
    )
    group.add_argument(
        "--label-smoothing",
        type=as_float,
        default=None,
        help="label smoothing of the training loss (0 to 0.5); default 0.1 when fine-tuning, else 0",
    )
    group.add_argument(
        "--warmup-epochs",
        type=as_int,
        default=None,
        help="epochs of linear learning-rate warm-up (from a tenth) before the cosine schedule; "
        "default 1 when fine-tuning for 3 epochs or more, else 0",
    )


def _abstention(group: Any) -> None:
    """What the trained model abstains by (``trainlib.calibration``): recorded in model.json."""
    group.add_argument(
        "--target-precision",
        type=as_share,
        default=None,
        help="abstain below each class's confidence threshold chosen on the validation split for this "
        "precision (0-1; unset: no class thresholds)",
    )
    group.add_argument(
        "--min-confidence",
        type=as_share,
        default=0.0,
        help="abstain when the best class's calibrated probability is below this (0-1)",
    )


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The defaults that depend on other flags, and the checks across flags."""
    fixed = FIXED_SIZE.get(args.arch)
    if args.image_size is None:
        args.image_size = ARCHS[args.arch].preprocessing()[0]
    elif fixed is not None and args.image_size != fixed:
        parser.error(
            f"--arch {args.arch} takes {fixed}-pixel images only (its position embeddings), not {args.image_size}"
        )
    _recipe(parser, args)


def _recipe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The fine-tuning recipe's defaults: on for full mode from ImageNet weights."""
    tuning = args.train_mode == "full" and args.weights == "imagenet"
    if args.trivial_augment == "auto":
        args.trivial_augment = "on" if tuning else "off"
    if args.label_smoothing is None:
        args.label_smoothing = 0.1 if tuning else 0.0
    if args.warmup_epochs is None:
        args.warmup_epochs = 1 if tuning and args.epochs >= 3 else 0
    if not 0.0 <= args.label_smoothing <= 0.5:
        parser.error(f"--label-smoothing must be from 0 to 0.5, got {args.label_smoothing}")
    if not 0 <= args.warmup_epochs < max(args.epochs, 1):
        parser.error(f"--warmup-epochs must be from 0 to fewer than --epochs ({args.epochs}), got {args.warmup_epochs}")


def hyperparameters(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name.replace("-", "_")) for name in HYPERPARAMETERS}
