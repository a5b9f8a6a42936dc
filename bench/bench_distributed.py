"""Training with several processes (torchrun, DistributedDataParallel) against one process on the same cores.

On this machine's CPUs: the same full fine-tune, 2 processes of 1 thread each (gloo) against 1 process
of 2 threads, images per second of the epochs after the first (train.py's ``history.json``: rank 0's
epoch time, every process's images). What DDP costs on top of the work: gradient all-reduce, the
sampler's split, processes' uneven ends. GPU rows (1 GPU against every GPU of the machine) come from
the same script where there is a GPU; none here, and none is estimated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Row, table, write

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def rate(data: Path, processes: int, threads: int, size: int, epochs: int = 3) -> float:
    """Median images/s of the epochs after the first."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                *(launcher if processes > 1 else [sys.executable]),
                "train.py",
                *("--data-dir", str(data), "--model-dir", f"{tmp}/m", "--output-data-dir", f"{tmp}/o"),
                *("--no-checkpoints", "--weights", "none", "--train-mode", "full", "--image-size", str(size)),
                *("--epochs", str(epochs), "--batch-size", str(BATCH), "--workers", "0", "--profile", "off"),
            ],
            cwd=ROOT / "training",
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            capture_output=True,
            text=True,
            check=True,
        )
        history = json.loads(Path(tmp, "o", "history.json").read_text())
    rates = sorted(h["images"] / h["seconds"] for h in history[1:])
    return rates[len(rates) // 2]


def run() -> list[Row]:
    from droptrain.synthetic import make_dataset

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d64"
        make_dataset(data, classes=4, per_class=150, size=64, seed=0)
        one = rate(data, 1, cores, 64)
        many = rate(data, cores, 1, 64)
        rows.append(
            Row(
                f"full fine-tune, 64 px, CPU: {cores} processes × 1 thread (DDP, gloo)",
                many,
                one,
                f"1 process × {cores} threads",
                "img/s",
                target=">= 0.85",
                note="epochs after the first",
            )
        )
    if not torch.cuda.is_available():
        rows.append(Row("GPU scaling (1 GPU against all of them)", 0.0, 0.0, "no GPU on this machine", "-"))
    return rows


if __name__ == "__main__":
    print(table(json.loads(write(run(), "distributed").read_text())))
