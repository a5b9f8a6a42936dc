"""``train.py``'s command line: hyperparameters as SageMaker passes them, paths from its ``SM_*`` variables.

SageMaker's SDK JSON-encodes string hyperparameters (``"adam"``): both forms are accepted.
``--_*`` and ``--sagemaker_*`` flags (what a tuning job adds) are not ours and are ignored; any
other unknown flag is an error, so a misspelt hyperparameter never trains with a default.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from trainlib.archives import DEFAULT_MAX_BYTES
from trainlib.hyperparameters import (  # noqa: F401 - train.py reads hyperparameters from here
    add_hyperparameters,
    as_float,
    as_int,
    as_text,
    as_word,
    hyperparameters,
    resolve,
)

DESCRIPTION = "droptrain's training entry point: SageMaker script mode, and plain ``python train.py`` locally."
# The final training job is named <run-id>-final (chalice_app/names.py final_job_name; the two are
# kept equal by tests/test_parity.py, since the training code cannot import the orchestrator's).
FINAL_JOB_SUFFIX = "-final"
# SageMaker adds these to a tuning job's children; they are not ours to interpret.
_FOREIGN_PREFIXES = ("--_", "--sagemaker_")


def _container_path(value: str) -> Path:
    """A ``/opt/ml/...`` path, under ``$SAGEMAKER_BASE_DIR`` where the training toolkit was relocated
    there (the local runtime does), as the toolkit itself relocates ``/opt/ml``."""
    value = as_text(value)
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
    add_hyperparameters(p.add_argument_group("hyperparameters"))
    _data(p.add_argument_group("data"))
    _retrain(p.add_argument_group("retrain"))
    outputs = p.add_argument_group("outputs")
    _outputs(outputs)
    _diagnostics(outputs)
    _export(outputs)
    _device(p.add_argument_group("device"))
    return p


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
        type=as_float,
        default=0.1,
        help="share of each class carved from train/ when valid/ is missing",
    )
    group.add_argument(
        "--test-fraction",
        type=as_float,
        default=0.1,
        help="share of each class carved from train/ when test/ is missing",
    )
    group.add_argument(
        "--max-extract-bytes",
        type=as_int,
        default=DEFAULT_MAX_BYTES,
        help="refuse archives whose content is larger than this",
    )
    group.add_argument(
        "--workers", type=as_int, default=-1, help="data-loading worker processes; -1 picks for the device"
    )
    group.add_argument(
        "--feature-cache",
        type=Path,
        default=_env_path("DROPTRAIN_FEATURE_CACHE", None),
        help="head mode: keep the frozen backbone's features in this folder, so that other runs on the "
        "same images and backbone (a tuning job's trials) load them instead of computing them "
        "(default $DROPTRAIN_FEATURE_CACHE; none: off)",
    )


def _retrain(group: Any) -> None:
    """What a retrain adds: the review queue's labels and the serving model to start from."""
    group.add_argument(
        "--reviewed-dir",
        type=Path,
        default=_env_path("SM_CHANNEL_REVIEWED", None),
        help="images labelled in the review queue (<dir>/{train,test}/<class>/<image>), added to those "
        "splits; a class the dataset lacks becomes a new class (default $SM_CHANNEL_REVIEWED; none: none)",
    )
    group.add_argument(
        "--warm-start-dir",
        type=Path,
        default=_env_path("SM_CHANNEL_WARMSTART", None),
        help="a model to start from (a model.tar.gz, or its extracted folder; same --arch): its weights, "
        "its head's rows by class name (default $SM_CHANNEL_WARMSTART; none: --weights)",
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
        type=as_text,
        default=_default_run_id(),
        help="run id recorded in model.json (default: the job name without -final)",
    )
    group.add_argument(
        "--serving-gpus",
        type=as_int,
        default=0,
        choices=[0, 1],
        help="GPUs the Ray Serve deployment asks for in the artifact's config.yaml: 1 for a GPU "
        "inference instance type, else 0",
    )


def _export(group: Any) -> None:
    group.add_argument(
        "--export",
        type=as_word,
        default="off",
        choices=["on", "off"],
        help="also write model.onnx and a TorchScript model.pt (the final job's), each checked against "
        "the PyTorch model on the held-out split (export.json)",
    )
    group.add_argument(
        "--serving-engine",
        type=as_word,
        default="torch",
        choices=["torch", "onnxruntime"],
        help="what the artifact's Ray Serve application predicts with on a CPU: onnxruntime runs the exported "
        "model.onnx (needs --export on and its parity check passed; else torch, and export.json says why)",
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
        type=as_word,
        default="auto",
        choices=["auto", "on", "off"],
        help="system metrics, step-time breakdown, torch.profiler window and the HTML report; "
        "auto = with the debugger hook",
    )
    group.add_argument(
        "--stop-on-rule-issues",
        type=as_word,
        default="false",
        choices=["true", "false"],
        help="evaluate the debugger rules after every epoch and stop the job at the first issue",
    )
    group.add_argument(
        "--reports-uri",
        type=as_text,
        default=None,
        help="s3:// prefix to upload the report and rule verdicts to, when running on SageMaker",
    )


def _device(group: Any) -> None:
    """Where it trains."""
    group.add_argument(
        "--num-gpus",
        type=as_int,
        default=int(os.environ.get("SM_NUM_GPUS", "-1")),
        help="0 trains on the CPU; otherwise one GPU per process, several GPUs through torchrun (default $SM_NUM_GPUS)",
    )
    group.add_argument(
        "--device",
        type=as_word,
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
    resolve(parser, args)
    for name in ("lr", "batch_size", "epochs", "image_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.weight_decay < 0:
        parser.error("--weight-decay must not be negative")
    return args
