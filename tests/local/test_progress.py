"""droptrain up's live view: bars on a terminal, plain lines in a log, the tuning job's best so far."""

from __future__ import annotations

import io

from droptrain.progress import LiveProgress

TRIAL = "pets-1a2b3c4d-002-0badf00d"
OTHER = "pets-1a2b3c4d-003-12345678"
COMMAND = "/venv/bin/python -- train.py --arch resnet18 --batch-size 32 --epochs 4 --image-size 64 --lr 0.01"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(progress: LiveProgress, clock: Clock) -> None:
    progress(TRIAL, COMMAND)
    clock.now += 2
    progress(TRIAL, "progress: epoch 1/4, 320/1260 images, 160.0 images/s")
    clock.now += 6
    progress(TRIAL, "epoch=1 train_loss=1.2000 valid_loss=1.1000 valid_accuracy=0.6000")
    progress(TRIAL, "epoch=2 train_loss=0.9000 valid_loss=0.9500 valid_accuracy=0.7000")
    progress(OTHER, COMMAND)
    progress(TRIAL, "2026-11-24 16:25:15,364 sagemaker-training-toolkit INFO     Reporting training SUCCESS")
    progress(OTHER, "epoch=1 train_loss=1.0000 valid_loss=1.0000 valid_accuracy=0.5000")
    progress(OTHER, "2026-11-24 16:25:17,364 sagemaker-training-toolkit INFO     Reporting training SUCCESS")


def test_a_log_gets_plain_lines_only():
    said, out, clock = [], io.StringIO(), Clock()
    feed(LiveProgress(said.append, out=out, live=False, clock=clock), clock)
    assert out.getvalue() == "", "no status line, no control characters in a log"
    assert said[0] == f"  ▶ trial 002 {TRIAL}"
    assert "      epoch=1 train_loss=1.2000 valid_loss=1.1000 valid_accuracy=0.6000" in said
    assert not any("progress:" in line for line in said), "within-epoch progress is for the bar only"
    assert f"  ✓ trial 002 {TRIAL}: 8.0s" in said
    assert said.count("  ★ pets-1a2b3c4d: best so far valid_accuracy=0.7000 (trial 002)") == 1
    assert not any("0.5000 (trial 003)" in line for line in said), "a worse trial is not the best"


def test_a_terminal_gets_a_bar_per_running_job():
    said, out, clock = [], io.StringIO(), Clock()
    progress = LiveProgress(said.append, out=out, live=True, clock=clock)
    progress(TRIAL, COMMAND)
    clock.now += 2
    progress(TRIAL, "progress: epoch 1/4, 630/1260 images, 315.0 images/s")
    line = progress.status()
    # Half of the first of four epochs at 315 images/s: 4 s per epoch, 2 s left in this one, 3 more.
    assert line.startswith("trial 002 [#         ] epoch 1/4 315 img/s ETA 14s"), line
    assert "\r\x1b[K" in out.getvalue()
    progress(TRIAL, "epoch=1 train_loss=1.2000 valid_loss=1.1000 valid_accuracy=0.6000")
    assert progress.status().startswith("trial 002 [##        ] epoch 2/4 315 img/s ETA 12s valid_accuracy 0.600"), (
        progress.status()
    )
    feed(progress, clock)
    assert progress.status().endswith("best 0.700 (trial 002)")
