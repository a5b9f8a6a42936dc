"""train.py under torchrun, as SageMaker's PyTorch container starts it for several processes: two
processes on this machine's CPUs (gloo) train as one does, rank 0 alone writes, a failing rank ends
the job with its reason, and a checkpoint of two processes resumes in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DEADLINE, TRAINING_DIR, run_train

# Head mode on a random backbone: the features are the same in every run, so one process and two
# differ only in the order their sums are taken (each step's global batch is the same 16 images).
HEAD = ["--arch", "resnet18", "--weights", "none", "--train-mode", "head", "--image-size", "48"]
HEAD += ["--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--workers", "0", "--profile", "off"]

# Loaded by every process of a run (PYTHONPATH): records each file it opens for writing, and makes
# the rank named by FAIL_RANK fail as a bad dataset would, on its first image.
SITECUSTOMIZE = """
import os, sys
rank, record = os.environ.get("RANK", "-"), os.environ.get("WRITES")
def hook(event, args):
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode = os.fsdecode(args[0]), args[1] or "r"
    if record and path.startswith(record):  # this hook's own record
        return
    if record and any(c in str(mode) for c in "wax+"):
        with open(f"{record}-{rank}", "a") as out:
            out.write(path + "\\n")
    if rank == os.environ.get("FAIL_RANK") and path.endswith(".jpg"):
        from trainlib.errors import DatasetError
        raise DatasetError(f"rank {rank} cannot read {os.path.basename(path)}")
sys.addaudithook(hook)
"""


def _train(
    tmp_path: Path, name: str, data: Path, processes: int, extra: list[str] = (), env: dict | None = None, warm=None
):
    """``train.py`` under torchrun as ``processes`` processes, each recording what it writes; one process runs
    in a fork of ``warm`` instead (the one-process runs these tests compare with are not what they judge)."""
    job = tmp_path / name
    args = [*HEAD, "--data-dir", str(data), "--model-dir", str(job / "model"), "--output-data-dir", str(job / "out")]
    args += ["--checkpoint-dir", str(job / "checkpoints"), "--run-id", name, *extra]
    environ = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SM_OUTPUT_DIR": str(job / "output"), **(env or {})}
    if processes == 1:
        return job, run_train(args, warm, environ)
    (job / "site").mkdir(parents=True)
    (job / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    environ["PYTHONPATH"] = os.pathsep.join([str(job / "site"), os.environ.get("PYTHONPATH", "")])
    environ["WRITES"] = str(job / "writes")
    result = subprocess.run(
        [*launcher, "train.py", *args],
        cwd=TRAINING_DIR,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    return job, result


def _writes(job: Path, rank: str) -> list[str]:
    path = job / f"writes-{rank}"
    return [p for p in path.read_text().splitlines() if p.startswith(str(job))] if path.exists() else []


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory, shared_warm):
    tmp = tmp_path_factory.mktemp("distributed")
    one = _train(tmp, "one", tiny_dataset, 1, warm=shared_warm)
    # Its frozen features go to a feature cache (rank 0's) that a later run reads.
    two = _train(tmp, "two", tiny_dataset, 2, ["--feature-cache", str(tmp / "two" / "cache")])
    return one, two


def test_two_processes_train_as_one_does_and_only_rank_0_writes(runs):
    (one, single), (two, double) = runs
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    lines = double.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("distributed:")) == [
        "distributed: world size 2, rank 0, local rank 0, backend gloo",
        "distributed: world size 2, rank 1, local rank 1, backend gloo",
    ], "every process says where it stands"
    epochs = [line for line in lines if line.startswith("epoch=")]
    assert [line.split()[0] for line in epochs] == ["epoch=1", "epoch=2", "epoch=3"], "one metric line per epoch"
    first, second = (json.loads((job / "model" / "model.json").read_text())["metrics"] for job in (one, two))
    # Tolerance: the same global batches from the same weights; only floating-point sums differ.
    for metric in ("valid_loss", "test_loss"):
        assert second[metric] == pytest.approx(first[metric], rel=0.02, abs=0.02), (metric, first, second)
    for metric in ("valid_accuracy", "test_accuracy"):
        assert abs(second[metric] - first[metric]) <= 0.05, (metric, first, second)
    evaluation = json.loads((two / "out" / "evaluation.json").read_text())
    test_images = json.loads((one / "model" / "model.json").read_text())["dataset"]["test"]
    assert sum(row["support"] for row in evaluation["per_class"].values()) == test_images, "the whole split, once"
    assert _writes(two, "0"), "rank 0 wrote the job's files"
    assert _writes(two, "1") == [], "rank 1 wrote none of them"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(
        p.name for p in (one / "checkpoints").iterdir()
    )


def test_the_feature_cache_rank_0_filled_serves_the_next_run_of_two_processes(runs, tiny_dataset, tmp_path):
    (_, _), (two, double) = runs
    assert double.returncode == 0
    assert "computed frozen features" in double.stderr and len(list((two / "cache").glob("*.pt"))) == 3
    job, cached = _train(tmp_path, "cached", tiny_dataset, 2, ["--feature-cache", str(two / "cache")])
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert "loaded frozen features" in cached.stderr and "computed frozen features" not in cached.stderr
    first, second = (json.loads((j / "model" / "model.json").read_text())["metrics"] for j in (two, job))
    assert second == pytest.approx(first, rel=1e-5), "the same features, the same run"
    assert _writes(job, "1") == []


def test_a_checkpoint_of_two_processes_resumes_in_one(runs, tiny_dataset, tmp_path, shared_warm):
    (_, _), (two, double) = runs
    assert double.returncode == 0
    extra = ["--checkpoint-dir", str(two / "checkpoints")]
    job, result = _train(tmp_path, "resumed", tiny_dataset, 1, extra, warm=shared_warm)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint at epoch 3" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("epoch=")] == [], "nothing left to train"


def test_a_rank_that_fails_ends_the_job_with_its_reason(tiny_dataset, tmp_path):
    job, result = _train(tmp_path, "failing", tiny_dataset, 2, env={"FAIL_RANK": "1"})
    assert result.returncode != 0
    reason = (job / "output" / "failure").read_text()
    assert reason.startswith("DatasetError: rank 1 cannot read "), reason
    assert not (job / "model" / "model.pth").exists(), "no model from a failed job"


def test_a_full_fine_tune_of_two_processes_shares_the_images_and_writes_one_model(tiny_dataset, tmp_path):
    """Decoded images (not features): each process its share of each epoch's shuffle (DistributedSampler),
    BatchNorm and all under DDP, the processes' uneven last batches joined; rank 0's debugger hook
    watches the module itself, and the rules judge what it saved."""
    full = ["--train-mode", "full", "--augment", "on", "--epochs", "2", "--batch-size", "10"]
    job, result = _train(tmp_path, "full", tiny_dataset, 2, [*full, "--debug-out", str(tmp_path / "full" / "debug")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines() if line.startswith("epoch=")] == [
        "epoch=1",
        "epoch=2",
    ]
    meta = json.loads((job / "model" / "model.json").read_text())
    assert meta["hyperparameters"]["train-mode"] == "full" and (job / "model" / "model.pth").is_file()
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("rule=")]
    assert len(verdicts) == 6 and not any("status=Error" in line for line in verdicts), verdicts
    assert _writes(job, "1") == []
