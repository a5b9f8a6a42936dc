"""The live view of the local stack's jobs, fed each line a job prints (``LocalRuntime(on_line=...)``).

On a terminal: the lines that matter (a job starting, each epoch's metrics, the test split, errors,
a job's end, a tuning job's best so far) scroll, and one status line at the bottom is redrawn with
a bar per running job (epoch, images/s, ETA). Elsewhere (a log file, CI): the same lines, plain,
and no status line, so a log is not flooded.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from chalice_app import names

EPOCHS = re.compile(r"train\.py .*--epochs (\d+)")
EPOCH = re.compile(r"^epoch=(\d+) ")
PROGRESS = re.compile(r"^progress: epoch (\d+)/(\d+), (\d+)/(\d+) images, ([0-9.]+) images/s")
ACCURACY = re.compile(r"valid_accuracy=([0-9.]+)")
ENDED = re.compile(r"Reporting training (SUCCESS|FAILURE)")


@dataclass
class _Job:
    label: str
    started: float
    epochs: int = 0
    epoch: int = 0  # epochs done
    epoch_started: float = 0.0
    seen: int = 0
    images: int = 0
    rate: float = 0.0
    accuracy: float | None = None
    epoch_seconds: list[float] = field(default_factory=list)

    def eta(self, now: float) -> float | None:
        if not self.epochs:
            return None
        per_epoch = (
            self.images / self.rate
            if self.rate and self.images
            else sum(self.epoch_seconds) / len(self.epoch_seconds)
            if self.epoch_seconds
            else None
        )
        if per_epoch is None:
            return None
        in_epoch = max(0.0, per_epoch - (now - self.epoch_started))
        return in_epoch + per_epoch * max(0, self.epochs - self.epoch - 1)


def label(job: str) -> str:
    if names.is_final_job(job):
        return "final training"
    parts = job.rsplit("-", 2)
    return f"trial {parts[-2]}" if len(parts) == 3 and parts[-2].isdigit() else job


def tuning_of(job: str) -> str | None:
    parts = job.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[-2].isdigit() else None


class LiveProgress:
    def __init__(
        self,
        say: Callable[[str], None] = print,
        out: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.say, self.out, self.clock = say, out or sys.stdout, clock
        self.live = self.out.isatty() if live is None else live
        self.jobs: dict[str, _Job] = {}
        self.best: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._drawn = False

    def __call__(self, job: str, line: str) -> None:
        with self._lock:
            now = self.clock()
            state = self.jobs.get(job)
            if state is None:
                state = self.jobs[job] = _Job(label(job), now, epoch_started=now)
                self._print(f"  ▶ {state.label} {job}")
            self._read(job, state, line, now)
            if self.live:
                self._draw(now)

    def _read(self, job: str, state: _Job, line: str, now: float) -> None:
        if (match := EPOCHS.search(line)) and not state.epochs:
            state.epochs = int(match.group(1))
        elif match := PROGRESS.match(line):
            state.seen, state.images, state.rate = int(match.group(3)), int(match.group(4)), float(match.group(5))
        elif match := EPOCH.match(line):
            state.epoch = int(match.group(1))
            state.epoch_seconds.append(now - state.epoch_started)
            state.epoch_started, state.seen = now, 0
            if accuracy := ACCURACY.search(line):
                state.accuracy = float(accuracy.group(1))
            self._print(f"      {line}")
        elif line.startswith(("test_", "error:")):
            self._print(f"      {line}")
        elif match := ENDED.search(line):
            self.jobs.pop(job, None)
            self._print(
                f"  {'✓' if match.group(1) == 'SUCCESS' else '✗'} {state.label} {job}: {now - state.started:.1f}s"
            )
            self._better(job, state)

    def _better(self, job: str, state: _Job) -> None:
        tuning = tuning_of(job)
        if tuning is None or state.accuracy is None:
            return
        if tuning not in self.best or state.accuracy > self.best[tuning][0]:
            self.best[tuning] = (state.accuracy, state.label)
            self._print(f"  ★ {tuning}: best so far valid_accuracy={state.accuracy:.4f} ({state.label})")

    def _print(self, text: str) -> None:
        if self.live and self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False
        self.say(text)

    def status(self, now: float | None = None) -> str:
        """The status line: a bar per running job (with its last validation accuracy), then the best trial so far."""
        now = self.clock() if now is None else now
        parts = []
        for state in self.jobs.values():
            done = state.epoch + (state.seen / state.images if state.images else 0.0)
            fraction = done / state.epochs if state.epochs else 0.0
            bar = "#" * int(10 * fraction)
            eta = state.eta(now)
            parts.append(
                f"{state.label} [{bar:<10}] epoch {min(state.epoch + 1, state.epochs or 1)}/{state.epochs or '?'}"
                + (f" {state.rate:.0f} img/s" if state.rate else "")
                + (f" ETA {eta:.0f}s" if eta is not None else "")
                + (f" valid_accuracy {state.accuracy:.3f}" if state.accuracy is not None else "")
            )
        parts += [f"best {accuracy:.3f} ({who})" for accuracy, who in self.best.values()]
        return " | ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.status(now)
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.out.write("\r\x1b[K" + text[:width])
        self.out.flush()
        self._drawn = bool(text)
