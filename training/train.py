#!/usr/bin/env python
"""droptrain's training entry point: SageMaker script mode, and plain ``python train.py`` locally.

Paths come from SageMaker's ``SM_*`` variables (flags override them: ``trainlib.arguments``);
hyperparameters arrive as ``--name value`` pairs. One line per epoch for the tuning job's metric
definitions (``EPOCH_LINE``: ``epoch=3 train_loss=0.8123 valid_loss=0.7012 valid_accuracy=0.8120 ...``),
then the test split's. The artifact goes to the model dir, ``evaluation.json`` to the output data dir.
A ``TrainingError`` (bad dataset, diverging loss, weights unavailable) ends the job with one clear
line, the same text in SageMaker's failure file, and exit status 1. The shape is torchvision's
reference scripts': ``load_data``, ``train_one_epoch``, ``evaluate``, ``main(args)`` and its steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from trainlib import artifact, checkpoints, distributed, drift, profiling

# train.parse_args is the CLI's (and the tests'), hence the re-export.
from trainlib.arguments import get_args_parser, hyperparameters, parse_args  # noqa: F401
from trainlib.balance import Remedy
from trainlib.baseline import baseline_line, evaluate_baseline, shared_report
from trainlib.batches import make_batches, pick_device, pick_workers
from trainlib.calibration import Outputs, calibrate
from trainlib.datasets import Splits, add_reviewed, discover, drop_held_out, resolve_dataset_root
from trainlib.debugging import NullHook, create_hook
from trainlib.errors import DivergedError, TrainingError, write_failure
from trainlib.evaluation import classification_report, scores
from trainlib.export import export_step
from trainlib.fit import Fit, Progress, save_checkpoint, schedule
from trainlib.job_reports import Observers, stop_on_rule_issues, upload_reports, write_report, write_verdicts
from trainlib.loop import evaluate, make_optimizer, train_one_epoch
from trainlib.models import build_model, freeze_backbone
from trainlib.progress import ProgressLine
from trainlib.warmstart import warm_start

log = logging.getLogger("train")


def load_data(args: argparse.Namespace, work_dir: Path) -> Splits:
    """Find the dataset in the channel (extracting an archive into ``work_dir``) and split it."""
    root = resolve_dataset_root(args.data_dir, work_dir, max_bytes=args.max_extract_bytes)
    splits = discover(root, seed=args.seed, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
    if args.audit_dir is not None:  # AUDIT_FIX: the audit's cross-split duplicates leave valid/test
        leaked = set(json.loads((args.audit_dir / "audit.json").read_text()).get("leaked", []))
        print(
            f"audit: {drop_held_out(splits, root, leaked)} held-out images dropped as duplicates of other splits",
            flush=True,
        )
    if args.reviewed_dir is not None:  # the review queue's labels (POST /projects/{project}/retrain)
        print(f"review: {add_reviewed(splits, args.reviewed_dir)} reviewed images added", flush=True)
    print(splits.summary(), flush=True)
    return splits


def main(args: argparse.Namespace) -> dict:
    """Train, evaluate, and write the artifact; returns the final metrics. Under torchrun, in each of
    its processes: rank 0 prints and writes for the job (``trainlib.distributed``)."""
    device = pick_device(args)
    world = distributed.join(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(args.seed)  # every process builds the same model (a frozen backbone is not DDP's to sync)
    with contextlib.ExitStack() as stack:
        stack.callback(distributed.leave, world)
        if not world.main:  # the job's record (the metric lines SageMaker reads) is rank 0's alone
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="droptrain-")))
        # The dataset first, so that a bad one fails before any weights are loaded.
        splits = load_data(args, work_dir)
        fit = prepare(args, splits, device, world)
        if world.distributed:  # then each its own random stream (augmentation)
            torch.manual_seed(args.seed + world.rank)
        observers = stack.enter_context(contextlib.closing(observe(args, fit, len(splits.train), device)))
        history = run_epochs(args, fit, observers, resume(args, fit, splits))
        return finish(args, splits, fit, observers, history, work_dir)


# -- the steps of main -----------------------------------------------------------------------


def prepare(
    args: argparse.Namespace, splits: Splits, device: torch.device, world: distributed.World = distributed.ALONE
) -> Fit:
    model = build_model(args.arch, len(splits.classes), args.weights)
    if args.warm_start_dir is not None:
        print(warm_start(model, args.arch, splits.classes, args.warm_start_dir), flush=True)
    if args.train_mode == "head":
        freeze_backbone(model, args.arch)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    remedy = Remedy.of(args.class_balance, splits.train, len(splits.classes), world)
    print(f"class balance: {remedy.mode} ({remedy.why})", flush=True)
    data = make_batches(args, splits, model, device, world, remedy)
    trainable = data.trainable
    if world.distributed:  # several GPUs are used by as many processes (torchrun), never by one
        trainable = DistributedDataParallel(trainable, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(args, [p for p in trainable.parameters() if p.requires_grad])
    return Fit(
        model,
        data,
        trainable,
        # Weighted by class (--class-balance weights) and smoothed (--label-smoothing) while training only.
        remedy.criterion(device, args.label_smoothing),
        optimizer,
        schedule(optimizer, args.epochs, args.warmup_epochs),
        torch.amp.GradScaler(device.type, enabled=device.type == "cuda"),
        device,
        world,
        tuple(splits.classes),
    )


def observe(args: argparse.Namespace, fit: Fit, train_images: int, device: torch.device) -> Observers:
    """The debugger hook, and the profiler where one is wanted (with the hook, by default): rank 0's."""
    if not fit.world.main:
        return Observers(hook=NullHook())
    hook = create_hook(
        fit.bare,
        fit.criterion,
        args.debug_out,
        total_steps=math.ceil(train_images / args.batch_size) * args.epochs,
    )
    if not (args.profile == "on" or (args.profile == "auto" and hook.out_dir is not None)):
        return Observers(hook=hook)
    return Observers(
        hook=hook,
        timer=profiling.StepTimer(device, trace_dir=args.output_data_dir),
        sampler=profiling.SystemSampler().start(),
    )


def resume(args: argparse.Namespace, fit: Fit, splits: Splits) -> Progress:
    """The last checkpoint of this very run (same hyperparameters and data), if there is one."""
    folder = checkpoints.job_folder(args.checkpoint_dir)
    checkpoint_dir = None if args.no_checkpoints else checkpoints.usable_by_all(folder, fit.world)
    fingerprint = checkpoints.fingerprint(
        {"hyperparameters": hyperparameters(args), "classes": splits.classes, "train": len(splits.train)}
    )
    state = checkpoints.load(checkpoint_dir, fingerprint)
    if state is None:
        return Progress([], 1, checkpoint_dir, fingerprint, len(splits.train))
    fit.model.load_state_dict(state["model"])
    fit.optimizer.load_state_dict(state["optimizer"])
    fit.scheduler.load_state_dict(state["scheduler"])
    fit.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    print(f"resumed from checkpoint at epoch {state['epoch']}", flush=True)
    return Progress(state["history"], state["epoch"] + 1, checkpoint_dir, fingerprint, len(splits.train))


# What each epoch's line says, in this order (the tuning job's metric definitions read it).
EPOCH_LINE = ("train_loss", "valid_loss", "valid_accuracy", "valid_balanced_accuracy", "valid_macro_f1")


def run_epochs(args: argparse.Namespace, fit: Fit, observers: Observers, progress: Progress) -> list[dict]:
    """Every epoch not yet done: train, validate, checkpoint, then the epoch's metric line."""
    for epoch in range(progress.start_epoch, args.epochs + 1):
        started = time.perf_counter()
        try:
            train_stats = train_one_epoch(
                fit.trainable,
                fit.criterion,
                fit.optimizer,
                fit.data.train_batches(epoch),
                fit.device,
                fit.scaler,
                observers.hook,
                epoch,
                fit.amp,
                timer=observers.timer,
                progress=ProgressLine(epoch, args.epochs, progress.train_images),
                world=fit.world,
            )
        except DivergedError:
            # A diverging job is the one whose rule verdicts matter most: judge what was saved, then fail.
            observers.close()
            write_verdicts(observers.hook.out_dir, args.output_data_dir / "reports")
            raise
        valid = evaluate(
            fit.bare, fit.criterion, fit.data.eval_batches["valid"](), fit.device, observers.hook, fit.amp, fit.world
        )
        fit.scheduler.step()
        if epoch == progress.start_epoch:
            fit.data.decode_skipped += train_stats.skipped + valid.stats.skipped
        progress.history.append(
            {
                "epoch": epoch,
                "train_loss": train_stats.loss,
                "train_accuracy": train_stats.accuracy,
                "valid_loss": valid.stats.loss,
                "valid_accuracy": valid.stats.accuracy,
                **{
                    f"valid_{k}": v
                    for k, v in scores(valid.targets, valid.predictions, fit.classes).items()
                    if k != "accuracy"
                },
                "seconds": round(time.perf_counter() - started, 6),
                "images": train_stats.seen,
            }
        )
        if progress.checkpoint_dir is not None and fit.world.main:
            save_checkpoint(fit, progress, epoch)
        # Printed after the checkpoint: whoever reads "epoch=N" may rely on checkpoint N existing.
        print(f"epoch={epoch} " + " ".join(f"{k}={progress.history[-1][k]:.4f}" for k in EPOCH_LINE), flush=True)
        if args.stop_on_rule_issues == "true" and observers.hook.out_dir is not None:
            stop_on_rule_issues(observers.hook.out_dir, epoch)
    return progress.history


def held_out_passes(fit: Fit, observers: Observers, eval_split: str) -> dict:
    """The held-out split's pass and the validation split's, with their logits (calibration is fitted on
    the one and measured on the other); one pass where the validation split is all there is."""
    return {
        split: evaluate(
            fit.bare,
            fit.criterion,
            fit.data.eval_batches[split](),
            fit.device,
            observers.hook,
            fit.amp,
            fit.world,
            keep_logits=True,
        )
        for split in dict.fromkeys((eval_split, "valid"))
    }


def held_out_metrics(held, classes) -> dict:
    """The test split's metric line (the tuning job's and the final job's metric definitions read it)."""
    test = {f"test_{k}": v for k, v in scores(held.targets, held.predictions, classes).items() if k != "accuracy"}
    line = " ".join(f"{k}={v:.4f}" for k, v in test.items())
    print(f"test_loss={held.stats.loss:.4f} test_accuracy={held.stats.accuracy:.4f} {line}", flush=True)
    return {"test_loss": held.stats.loss, "test_accuracy": held.stats.accuracy, **test}


def finish(
    args: argparse.Namespace, splits: Splits, fit: Fit, observers: Observers, history: list[dict], work_dir: Path
) -> dict:
    """The held-out evaluation, the reports, and the model artifact."""
    last = history[-1] if history else {}
    metrics = {k: last[k] for k in EPOCH_LINE if k.startswith("valid_") and k in last}
    eval_split = "test" if "test" in fit.data.eval_batches else "valid"
    passes = held_out_passes(fit, observers, eval_split)
    held = passes[eval_split]
    if eval_split == "test":
        fit.data.decode_skipped += held.stats.skipped
        metrics.update(held_out_metrics(held, splits.classes))
    observers.close()
    if not fit.world.main:
        return metrics
    calibration = calibrate(
        *(Outputs.of(p.logits, p.targets) for p in (passes["valid"], held)),
        eval_split,
        splits.classes,
        args.target_precision,
        args.min_confidence,
    )
    print(calibration.line(), flush=True)
    evaluation = {
        **classification_report(held.targets, held.predictions, splits.classes),
        "split": eval_split,
        "calibration": calibration.evaluation,
    }
    if args.baseline_dir is not None:  # the serving model, on the same split, for the promotion gate
        evaluation["baseline"] = judge_baseline(args.baseline_dir, work_dir, getattr(splits, eval_split), held, fit)
    artifact.write_json(args.output_data_dir / "evaluation.json", evaluation)
    artifact.write_json(args.output_data_dir / "history.json", history)
    report_dir = args.output_data_dir / "reports"
    # Beside the other reports, where the pipeline reads it (runs/<run-id>/reports/evaluation.json).
    artifact.write_json(report_dir / "evaluation.json", evaluation)
    verdicts = write_verdicts(observers.hook.out_dir, report_dir)
    if observers.sampler is not None:
        write_report(  # a report that cannot be drawn says so in itself; it never fails the job
            args.run_id,
            report_dir,
            fit.device.type,
            pick_workers(args, fit.device),
            history,
            evaluation,
            verdicts,
            observers,
            setting={k: str(v) for k, v in hyperparameters(args).items()},
        )
    metadata = artifact.model_metadata(args, hyperparameters(args), splits, metrics, history, fit.data.decode_skipped)
    metadata["calibration"] = calibration.serving()
    artifact.write_model_dir(args.model_dir, fit.model, metadata, num_gpus=args.serving_gpus)
    if args.export == "on":  # the final job's: the exports (each kept only if it answers alike), drift's reference
        final_extras(args, fit.model, metadata, splits, eval_split, report_dir)
    if args.reports_uri:
        upload_reports(report_dir, args.reports_uri)
    return metrics


def judge_baseline(channel: Path, work_dir: Path, samples: list, held, fit: Fit) -> dict:
    """The serving model on this job's held-out images; where this job knows a class more, both models'
    reports on the images of the classes both know (``baseline.new``: this one's)."""
    baseline = evaluate_baseline(channel, work_dir, samples, list(fit.classes), fit.device)
    if "shared_classes" in baseline:
        baseline["new"] = shared_report(held.targets, held.predictions, fit.classes, baseline["shared_classes"])
    print(baseline_line(baseline), flush=True)
    return baseline


def final_extras(
    args: argparse.Namespace, model: torch.nn.Module, meta: dict, splits: Splits, split: str, report_dir: Path
) -> None:
    """What only a deployable model needs: ONNX and TorchScript exports, and the drift check's reference."""
    export_step(model, meta, getattr(splits, split), split, args.model_dir, report_dir, args.serving_engine)
    drift.reference_step(model, meta, splits.train, args.model_dir)


def run(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        main(args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        # The kind leads the FailureReason: the orchestrator stops a tuning job at the first trial
        # that fails with a kind every trial would repeat (chalice_app.names.REPEATING_FAILURES).
        write_failure(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
