#!/usr/bin/env python
"""droptrain's training entry point: SageMaker script mode, and plain ``python train.py`` locally.

Paths come from SageMaker's ``SM_*`` variables (flags override them); hyperparameters arrive as
``--name value`` pairs, as SageMaker passes them. One line per epoch, in the format the tuning
job's MetricDefinitions parse::

    epoch=3 train_loss=0.8123 valid_loss=0.7012 valid_accuracy=0.8120

then ``test_loss=… test_accuracy=…`` when a test split exists. The model artifact goes to the
model dir, ``evaluation.json`` to the output data dir. A ``TrainingError`` (bad dataset,
diverging loss, weights unavailable) ends the job with one clear line, the same text in SageMaker's
failure file, and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch
import torchvision
from torch import nn

from trainlib import artifact, checkpoints, featurecache, profiling, report, rules
from trainlib.archives import DEFAULT_MAX_BYTES
from trainlib.datasets import Splits, discover, resolve_dataset_root
from trainlib.debugging import create_hook
from trainlib.errors import DatasetError, DivergedError, TrainingError
from trainlib.evaluation import classification_report
from trainlib.loading import Batch, FeatureSet, extract_features, image_loader
from trainlib.models import ARCHS, FrozenBackboneClassifier, backbone_of, build_model, freeze_backbone
from trainlib.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, resize_size, train_transform

log = logging.getLogger("train")

# The tunable and static hyperparameters (ARCHITECTURE.md), as flag names. Recorded in model.json.
HYPERPARAMETERS = (
    "lr", "batch-size", "epochs", "weight-decay", "optimizer", "arch", "weights", "train-mode",
    "image-size", "augment", "seed",
)
# SageMaker adds these to a tuning job's children; they are not ours to interpret.
_FOREIGN_PREFIXES = ("--_", "--sagemaker_")


# -- arguments -------------------------------------------------------------------------------


def _text(value: str) -> str:
    """SageMaker's SDK JSON-encodes string hyperparameters (``"adam"``); accept both forms."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


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


def _container_path(value: str) -> Path:
    """A ``/opt/ml/...`` path, under ``$SAGEMAKER_BASE_DIR`` where the training toolkit was relocated
    there (the local runtime does), as the toolkit itself relocates ``/opt/ml``."""
    value = _text(value)
    base = os.environ.get("SAGEMAKER_BASE_DIR")
    if base and (value == "/opt/ml" or value.startswith("/opt/ml/")):
        return Path(base) / value[len("/opt/ml"):].lstrip("/")
    return Path(value)


def _env_path(name: str, fallback: str | None) -> Path | None:
    value = os.environ.get(name, fallback)
    return Path(value) if value else None


def _default_run_id() -> str:
    job = os.environ.get("TRAINING_JOB_NAME", "")
    return job.removesuffix("-final") if job else "local"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hp = p.add_argument_group("hyperparameters")
    hp.add_argument("--lr", type=_float, default=1e-3, help="learning rate")
    hp.add_argument("--batch-size", type=_int, default=32, help="images per training batch")
    hp.add_argument("--epochs", type=_int, default=5, help="passes over the training split")
    hp.add_argument("--weight-decay", type=_float, default=1e-4, help="L2 weight decay")
    hp.add_argument("--optimizer", type=_text, default="adamw", choices=["adam", "adamw", "sgd"], help="optimizer (sgd uses Nesterov momentum 0.9)")
    hp.add_argument("--arch", type=_text, default="resnet18", choices=list(ARCHS), help="torchvision ResNet architecture")
    hp.add_argument("--weights", type=_text, default="imagenet", choices=["imagenet", "none"], help="start from ImageNet weights (torch hub cache, else download) or from scratch")
    hp.add_argument("--train-mode", type=_text, default="head", choices=["head", "full"], help="head: frozen backbone, train the classifier only; full: fine-tune everything")
    hp.add_argument("--image-size", type=_int, default=224, help="side of the square crop fed to the network")
    hp.add_argument("--augment", type=_text, default="auto", choices=["auto", "on", "off"], help="random crops and flips; auto = off in head mode (frozen features are computed once and reused), on in full mode")
    hp.add_argument("--seed", type=_int, default=42, help="seed for splits, shuffling and initialisation")

    data = p.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=_env_path("SM_CHANNEL_TRAINING", None), help="the training channel: a dataset folder or one archive (default $SM_CHANNEL_TRAINING)")
    data.add_argument("--valid-fraction", type=_float, default=0.1, help="share of each class carved from train/ when valid/ is missing")
    data.add_argument("--test-fraction", type=_float, default=0.1, help="share of each class carved from train/ when test/ is missing")
    data.add_argument("--max-extract-bytes", type=_int, default=DEFAULT_MAX_BYTES, help="refuse archives whose content is larger than this")
    data.add_argument("--workers", type=_int, default=-1, help="data-loading worker processes; -1 picks for the device")
    data.add_argument("--feature-cache", type=Path, default=_env_path("DROPTRAIN_FEATURE_CACHE", None), help="head mode: keep the frozen backbone's features in this folder, so that other runs on the same images and backbone (a tuning job's trials) load them instead of computing them (default $DROPTRAIN_FEATURE_CACHE; none: off)")

    out = p.add_argument_group("outputs")
    out.add_argument("--model-dir", type=Path, default=_env_path("SM_MODEL_DIR", "model"), help="where the model artifact is written (default $SM_MODEL_DIR)")
    out.add_argument("--output-data-dir", type=Path, default=_env_path("SM_OUTPUT_DATA_DIR", "output"), help="where evaluation.json is written (default $SM_OUTPUT_DATA_DIR)")
    out.add_argument("--checkpoint-dir", type=_container_path, default=_container_path("/opt/ml/checkpoints"), help="per-epoch checkpoints, resumed when they match this run (SageMaker syncs this folder for spot training)")
    out.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints and resume from none")
    out.add_argument("--debug-out", type=_container_path, default=None, help="save smdebug tensors here (SageMaker's DebugHookConfig also turns the hook on)")
    out.add_argument("--run-id", type=_text, default=_default_run_id(), help="run id recorded in model.json (default: the job name without -final)")
    out.add_argument("--profile", type=_text, default="auto", choices=["auto", "on", "off"], help="system metrics, step-time breakdown, torch.profiler window and the HTML report; auto = with the debugger hook")
    out.add_argument("--stop-on-rule-issues", type=_text, default="false", choices=["true", "false"], help="evaluate the debugger rules after every epoch and stop the job at the first issue")
    out.add_argument("--reports-uri", type=_text, default=None, help="s3:// prefix to upload the report and rule verdicts to, when running on SageMaker")
    out.add_argument("--serving-gpus", type=_int, default=0, choices=[0, 1], help="GPUs the Ray Serve deployment asks for in the artifact's config.yaml: 1 for a GPU inference instance type, else 0")

    dev = p.add_argument_group("device")
    dev.add_argument("--num-gpus", type=_int, default=int(os.environ.get("SM_NUM_GPUS", "-1")), help="GPUs to use; -1 uses all visible (default $SM_NUM_GPUS)")
    dev.add_argument("--device", type=_text, default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present (with mixed precision), else CPU")
    return p


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


# -- data ------------------------------------------------------------------------------------


@dataclass
class Data:
    """Per-split batch sources, and the module the optimiser trains."""

    train_batches: Callable[[int], Iterable[Batch]]
    eval_batches: dict[str, Callable[[], Iterable[Batch]]]
    trainable: nn.Module
    decode_skipped: int = 0


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is visible")
    if args.device == "cpu" or args.num_gpus == 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def pick_workers(args: argparse.Namespace, device: torch.device) -> int:
    if args.workers >= 0:
        return args.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return min(cpus, 8 * max(1, torch.cuda.device_count()))
    # On a small CPU machine decoding competes with the model for the same cores.
    return 0 if cpus <= 2 else min(4, cpus // 2)


def load_data(args: argparse.Namespace, work_dir: Path) -> Splits:
    """Find the dataset in the channel (extracting an archive into ``work_dir``) and split it."""
    root = resolve_dataset_root(args.data_dir, work_dir, max_bytes=args.max_extract_bytes)
    splits = discover(root, seed=args.seed, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
    print(splits.summary(), flush=True)
    return splits


def make_batches(args: argparse.Namespace, splits: Splits, model: nn.Module, device: torch.device) -> Data:
    """Batch sources for the training mode.

    Head mode without augmentation runs the frozen backbone once per image and trains the head
    on the cached features every epoch after; otherwise images are decoded every epoch.
    """
    amp = device.type == "cuda"
    workers = pick_workers(args, device)
    pin = device.type == "cuda"
    eval_tf = eval_transform(args.image_size)
    eval_bs = args.batch_size * 2
    head_mode = args.train_mode == "head"
    augment = args.augment == "on" or (args.augment == "auto" and not head_mode)

    def loader(samples, transform, batch_size, shuffle):
        return image_loader(samples, transform, batch_size, shuffle, workers, pin, args.seed)

    eval_samples = {"valid": splits.valid, "test": splits.test}
    # The frozen pass is inference only, so its batch is the device's best, not the training batch:
    # on a CPU large batches fall out of cache (ResNet-18 at 224 px: 58 img/s at 16, 48 at 64).
    feature_batch = 32 if device.type == "cpu" else 256
    if head_mode and not augment:
        backbone = backbone_of(model)

        def compute(samples):
            return lambda: extract_features(backbone, loader(samples, eval_tf, feature_batch, False), device, amp)

        cached = frozen_features(args, backbone, {"train": splits.train, **eval_samples}, compute, device)
        _require_decoded(cached)
        generator = torch.Generator().manual_seed(args.seed)
        return Data(
            train_batches=lambda epoch: cached["train"].batches(args.batch_size, True, generator),
            eval_batches={name: (lambda f=f: f.batches(eval_bs, False)) for name, f in cached.items() if name != "train"},
            trainable=model.fc,
            decode_skipped=sum(f.skipped for f in cached.values()),
        )

    train_loader = loader(splits.train, train_transform(args.image_size) if augment else eval_tf, args.batch_size, True)
    eval_loaders = {name: loader(samples, eval_tf, eval_bs, False) for name, samples in eval_samples.items() if samples}
    return Data(
        train_batches=lambda epoch: train_loader,
        eval_batches={name: (lambda l=l: l) for name, l in eval_loaders.items()},
        trainable=FrozenBackboneClassifier(model) if head_mode else model,
    )


def frozen_features(args, backbone: nn.Module, samples_by_split: dict, compute: Callable, device: torch.device) -> dict[str, FeatureSet]:
    """Each non-empty split's features: from ``--feature-cache`` when another run computed them, else computed."""
    cache = featurecache.open_cache(args.feature_cache)
    digest = featurecache.backbone_digest(backbone) if cache is not None else ""
    # CUDA computes them in mixed precision: not the same numbers as a CPU run's.
    transform = f"eval:{args.image_size}:{resize_size(args.image_size)}:{IMAGENET_MEAN}:{IMAGENET_STD}:{device.type}"
    out: dict[str, FeatureSet] = {}
    images = {True: 0, False: 0}  # by whether they came from the cache
    seconds = {True: 0.0, False: 0.0}
    for name, samples in samples_by_split.items():
        if not samples:
            continue
        started = time.perf_counter()
        if cache is None:
            out[name], hit = compute(samples)(), False
        else:
            key = featurecache.split_key(digest, transform, samples)
            out[name], hit = cache.get_or_compute(key, compute(samples), device)
        images[hit] += len(out[name].targets)
        seconds[hit] += time.perf_counter() - started
    # The benchmarks read these two lines.
    if images[False]:
        log.info("computed frozen features for %d images in %.3fs", images[False], seconds[False])
    if images[True]:
        log.info("loaded frozen features for %d images from the feature cache in %.3fs", images[True], seconds[True])
    return out


def _require_decoded(cached: dict[str, FeatureSet]) -> None:
    for name, features in cached.items():
        if len(features.targets) == 0:
            raise DatasetError(f"the {name} split has no decodable images ({features.skipped} failed to decode)")


# -- the loop --------------------------------------------------------------------------------


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seen: int
    skipped: int


def _check_finite(total_loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    if not torch.isfinite(total_loss):
        raise DivergedError(
            f"the training loss became NaN or infinite at epoch {epoch}, step {step} (lr={lr:g}): "
            "lower the learning rate or the weight decay"
        )


def _to_device(inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = inputs.to(device, non_blocking=True)
    if device.type == "cuda" and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


def train_one_epoch(model, criterion, optimizer, batches, device, scaler, hook, epoch, amp, check_every=10,
                    timer=profiling.NullTimer()) -> EpochStats:
    model.train()
    hook.set_mode("train")
    timer.epoch_start()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = skipped = step = 0
    lr = optimizer.param_groups[0]["lr"]
    for inputs, targets, n_skipped in batches:
        skipped += n_skipped
        if inputs is None:
            continue
        inputs, targets = _to_device(inputs, targets, device)
        timer.batch_ready()
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(inputs)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        timer.compute_done()
        scaler.step(optimizer)
        scaler.update()
        timer.step_done()
        step += 1
        total_loss += loss.detach().float() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        # A host sync every step would stall the GPU; a NaN is still caught within a few steps.
        if step % check_every == 0:
            _check_finite(total_loss, epoch, step, lr)
    _check_finite(total_loss, epoch, step, lr)
    if seen == 0:
        raise DatasetError("no training image could be decoded")
    return EpochStats(total_loss.item() / seen, correct.item() / seen, seen, skipped)


@torch.no_grad()
def evaluate(model, criterion, batches, device, hook, amp) -> tuple[EpochStats, list[int], list[int]]:
    model.eval()
    hook.set_mode("eval")
    total_loss, seen, skipped = 0.0, 0, 0
    predictions: list[int] = []
    targets_all: list[int] = []
    for inputs, targets, n_skipped in batches:
        skipped += n_skipped
        if inputs is None:
            continue
        inputs, targets = _to_device(inputs, targets, device)
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(inputs)
            loss = criterion(logits.float(), targets)
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        predictions.extend(logits.argmax(1).tolist())
        targets_all.extend(targets.tolist())
    if seen == 0:
        raise DatasetError("no evaluation image could be decoded")
    accuracy = sum(p == t for p, t in zip(predictions, targets_all)) / seen
    return EpochStats(total_loss / seen, accuracy, seen, skipped), predictions, targets_all


def make_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def main(args: argparse.Namespace) -> dict:
    """Train, evaluate, and write the artifact; returns the final metrics."""
    torch.manual_seed(args.seed)
    device = pick_device(args)
    amp = device.type == "cuda"
    work_dir = Path(tempfile.mkdtemp(prefix="droptrain-"))
    try:
        return _train(args, device, amp, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _train(args, device, amp, work_dir) -> dict:
    # The dataset first, so that a bad one fails before any weights are loaded.
    splits = load_data(args, work_dir)
    model = build_model(args.arch, len(splits.classes), args.weights)
    if args.train_mode == "head":
        freeze_backbone(model)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    data = make_batches(args, splits, model, device)

    trainable = data.trainable
    if device.type == "cuda" and torch.cuda.device_count() > 1 and args.num_gpus != 1:
        trainable = nn.DataParallel(trainable)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(args, [p for p in trainable.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    steps_per_epoch = math.ceil(len(splits.train) / args.batch_size)
    hook = create_hook(trainable, criterion, args.debug_out, total_steps=steps_per_epoch * args.epochs)
    profiled = args.profile == "on" or (args.profile == "auto" and hook.out_dir is not None)
    report_dir = args.output_data_dir / "reports"
    timer = profiling.StepTimer(device, trace_dir=args.output_data_dir) if profiled else profiling.NullTimer()
    sampler = profiling.SystemSampler().start() if profiled else None

    ckpt_dir = None if args.no_checkpoints else checkpoints.usable_dir(args.checkpoint_dir)
    fingerprint = checkpoints.fingerprint(
        {"hyperparameters": hyperparameters(args), "classes": splits.classes, "train": len(splits.train)}
    )
    history: list[dict] = []
    start_epoch = 1
    state = checkpoints.load(ckpt_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        print(f"resumed from checkpoint at epoch {state['epoch']}", flush=True)

    decode_skipped = data.decode_skipped
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.perf_counter()
        try:
            train_stats = train_one_epoch(trainable, criterion, optimizer, data.train_batches(epoch), device, scaler, hook,
                                          epoch, amp, timer=timer)
        except DivergedError:
            # A diverging job is the one whose rule verdicts matter most: judge what was saved, then fail.
            timer.close()
            if sampler is not None:
                sampler.stop()
            if hook.out_dir is not None:
                hook.close()
                _write_verdicts(hook.out_dir, report_dir)
            raise
        valid_stats, _, _ = evaluate(trainable, criterion, data.eval_batches["valid"](), device, hook, amp)
        scheduler.step()
        if epoch == start_epoch:
            decode_skipped += train_stats.skipped + valid_stats.skipped
        history.append({
            "epoch": epoch, "train_loss": train_stats.loss, "train_accuracy": train_stats.accuracy,
            "valid_loss": valid_stats.loss, "valid_accuracy": valid_stats.accuracy,
            "seconds": round(time.perf_counter() - t0, 6), "images": train_stats.seen,
        })
        if ckpt_dir is not None:
            checkpoints.save(ckpt_dir, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "history": history,
            })
        # Printed after the checkpoint: whoever reads "epoch=N" may rely on checkpoint N existing.
        print(
            f"epoch={epoch} train_loss={train_stats.loss:.4f} valid_loss={valid_stats.loss:.4f} "
            f"valid_accuracy={valid_stats.accuracy:.4f}",
            flush=True,
        )
        if args.stop_on_rule_issues == "true" and hook.out_dir is not None:
            _stop_on_rule_issues(hook.out_dir, epoch)

    metrics = {}
    if history:
        metrics.update({k: history[-1][k] for k in ("valid_loss", "valid_accuracy")})
    eval_split = "test" if "test" in data.eval_batches else "valid"
    stats, predictions, targets = evaluate(trainable, criterion, data.eval_batches[eval_split](), device, hook, amp)
    if eval_split == "test":
        decode_skipped += stats.skipped
        print(f"test_loss={stats.loss:.4f} test_accuracy={stats.accuracy:.4f}", flush=True)
        metrics.update({"test_loss": stats.loss, "test_accuracy": stats.accuracy})
    hook.close()

    evaluation = classification_report(targets, predictions, splits.classes)
    evaluation["split"] = eval_split
    artifact.write_json(args.output_data_dir / "evaluation.json", evaluation)
    artifact.write_json(args.output_data_dir / "history.json", history)
    timer.close()
    if sampler is not None:
        sampler.stop()
    verdicts = _write_verdicts(hook.out_dir, report_dir) if hook.out_dir is not None else []
    if profiled:
        _write_report(args, report_dir, device, history, evaluation, verdicts, timer, sampler)
    if args.reports_uri and report_dir.is_dir():
        upload_reports(report_dir, args.reports_uri)
    artifact.write_model_dir(args.model_dir, model, {
        "run_id": args.run_id,
        "arch": args.arch,
        "num_classes": len(splits.classes),
        "classes": splits.classes,
        "image_size": args.image_size,
        "resize_size": resize_size(args.image_size),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "metrics": metrics,
        "hyperparameters": hyperparameters(args),
        "dataset": {
            "layout": splits.layout, "carved": splits.carved,
            "train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test),
            "skipped_images": len(splits.unreadable) + decode_skipped,
        },
        "training_seconds": round(time.perf_counter() - started, 3),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "framework": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }, num_gpus=args.serving_gpus)
    return metrics


def _write_verdicts(out_dir: Path, report_dir: Path) -> list[dict]:
    verdicts = [asdict(v) for v in rules.evaluate(out_dir)]
    for verdict in verdicts:
        print(f"rule={verdict['rule']} status={verdict['status']}" + (f" step={verdict['step']}" if verdict["step"] is not None else ""), flush=True)
    artifact.write_json(report_dir / "rules.json", verdicts)
    return verdicts


def _stop_on_rule_issues(out_dir: Path, epoch: int) -> None:
    issues = [v for v in rules.evaluate(out_dir) if v.status == "IssuesFound"]
    if issues:
        raise TrainingError(f"stopped after epoch {epoch}: debugger rule {issues[0].rule} found an issue: {issues[0].message}")


def _write_report(args, report_dir: Path, device, history, evaluation, verdicts, timer, sampler) -> None:
    breakdown = timer.breakdown()
    system = sampler.summary()
    profile = {"device": device.type, "workers": pick_workers(args, device), "breakdown": breakdown,
               "step_ms": timer.mean_step_ms(), "system": system, "steps": timer.steps, "samples": sampler.samples,
               "torch_ops": timer.torch_summary}
    artifact.write_json(report_dir / "profile.json", profile)
    notes = profiling.findings(breakdown, system, history, verdicts, device.type, profile["workers"], evaluation,
                               profile["step_ms"])
    path = report.render(report_dir / "report.html", run_id=args.run_id, history=history, evaluation=evaluation,
                         verdicts=verdicts, profile=profile, findings=notes)
    print(f"report={path}", flush=True)


def upload_reports(report_dir: Path, uri: str) -> None:
    """On SageMaker, put the reports where the pipeline and people look for them (runs/<run-id>/reports/).
    Locally the executor copies them there, as SageMaker copies a job's outputs."""
    if not os.environ.get("SM_TRAINING_ENV") or os.environ.get("DROPTRAIN_LOCAL"):
        return
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        log.warning("boto3 is not installed: reports stay in the job's output.tar.gz")
        return
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    for path in sorted(report_dir.iterdir()):
        try:
            client.upload_file(str(path), bucket, prefix.rstrip("/") + "/" + path.name)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not upload %s to %s: %s", path.name, uri, exc)


def write_failure(message: str) -> None:
    """SageMaker shows the content of ``$SM_OUTPUT_DIR/failure`` as the job's FailureReason."""
    output_dir = os.environ.get("SM_OUTPUT_DIR")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(message[:1024])


def run(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        main(args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        write_failure(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
