"""The job profiling itself: system metrics over time, where each step's time goes, and a short
``torch.profiler`` window, all summarised in ``profile.json`` for the report.

The step timer sits in the training loop: ``data`` is the time spent waiting for the next batch,
``compute`` forward + backward, ``optimizer`` the update. On CUDA it synchronises at those points
(only in profiled jobs), so the split is the device's, not the launch queue's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class NullTimer:
    """Stands in when the job is not profiled, so the loop never branches on it."""

    def batch_ready(self) -> None:
        pass

    def compute_done(self) -> None:
        pass

    def step_done(self) -> None:
        pass

    def epoch_start(self) -> None:
        pass

    def close(self) -> None:
        pass


class StepTimer(NullTimer):
    def __init__(self, device: torch.device, torch_window: tuple[int, int] = (5, 5), trace_dir: Path | None = None):
        self.device = device
        self.steps: list[dict[str, float]] = []
        self._mark = time.perf_counter()
        self._ready = self._computed = self._mark
        self._torch = None
        self._torch_steps = 0
        self._window = torch_window
        self._trace_dir = trace_dir
        self.torch_summary: list[dict[str, Any]] = []

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def epoch_start(self) -> None:
        self._mark = self._sync()

    def batch_ready(self) -> None:
        self._ready = self._sync()
        if self._torch is None and len(self.steps) == self._window[0]:
            self._start_torch_profiler()

    def compute_done(self) -> None:
        self._computed = self._sync()

    def step_done(self) -> None:
        end = self._sync()
        self.steps.append(
            {
                "data": self._ready - self._mark,
                "compute": self._computed - self._ready,
                "optimizer": end - self._computed,
            }
        )
        self._mark = end
        if self._torch is not None:
            self._torch_steps += 1
            if self._torch_steps >= self._window[1]:
                self._stop_torch_profiler()

    def close(self) -> None:
        """End a profiler window left open (a job failing mid-window must not leave it running)."""
        if self._torch is not None:
            profiler, self._torch = self._torch, None
            profiler.__exit__(None, None, None)

    def _start_torch_profiler(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._torch = torch.profiler.profile(activities=activities, record_shapes=False)
        self._torch.__enter__()

    def _stop_torch_profiler(self) -> None:
        profiler, self._torch = self._torch, None
        profiler.__exit__(None, None, None)
        self._torch_steps = -(10**9)  # one window per job
        device_key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        events = sorted(profiler.key_averages(), key=lambda e: getattr(e, device_key, 0), reverse=True)[:12]
        self.torch_summary = [
            {"op": e.key, "calls": e.count, "self_ms": getattr(e, device_key, 0) / 1000} for e in events
        ]
        if self._trace_dir is not None:
            self._trace_dir.mkdir(parents=True, exist_ok=True)
            profiler.export_chrome_trace(str(self._trace_dir / "torch-trace.json"))

    def mean_step_ms(self) -> float:
        steps = self.steps[3:] or self.steps
        return 1000 * sum(sum(s.values()) for s in steps) / max(1, len(steps))

    def breakdown(self) -> dict[str, float]:
        """Share of step time per phase (steps after the first few, which carry warm-up)."""
        steps = self.steps[3:] or self.steps
        totals = {k: sum(s[k] for s in steps) for k in ("data", "compute", "optimizer")}
        whole = sum(totals.values()) or 1.0
        return {k: v / whole for k, v in totals.items()}


class SystemSampler:
    """CPU, memory, I/O and (where present) GPU utilisation, sampled in a background thread."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SystemSampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="system-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            log.warning("psutil is not installed: no system metrics")
            return
        process = psutil.Process()
        started = time.time()
        process.cpu_percent(None)
        psutil.cpu_percent(None)
        io_before = psutil.disk_io_counters()
        # One sample at once and one at the end, so that even a short job has a timeline.
        stopping = False
        while True:
            if not stopping:
                stopping = self._stop.wait(self.interval if self.samples else 0.05)
            io_now = psutil.disk_io_counters()
            sample = {
                "t": time.time() - started,
                "cpu_percent": psutil.cpu_percent(None),
                "process_cpu_percent": process.cpu_percent(None) / (os.cpu_count() or 1),
                "memory_percent": psutil.virtual_memory().percent,
                "rss_mb": process.memory_info().rss / 2**20,
            }
            if io_before and io_now:
                sample["read_mb_s"] = (io_now.read_bytes - io_before.read_bytes) / 2**20 / self.interval
                sample["write_mb_s"] = (io_now.write_bytes - io_before.write_bytes) / 2**20 / self.interval
                io_before = io_now
            if torch.cuda.is_available():
                sample["gpu_memory_mb"] = torch.cuda.memory_allocated() / 2**20
                try:
                    sample["gpu_percent"] = float(torch.cuda.utilization())
                except (RuntimeError, ModuleNotFoundError):  # utilization() needs pynvml
                    pass
            self.samples.append(sample)
            if stopping:
                return

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in (
            "cpu_percent",
            "process_cpu_percent",
            "memory_percent",
            "rss_mb",
            "gpu_percent",
            "gpu_memory_mb",
            "read_mb_s",
        ):
            values = [s[key] for s in self.samples if key in s]
            if values:
                out[f"{key}_mean"] = sum(values) / len(values)
                out[f"{key}_max"] = max(values)
        return out


# Trend rules that early epochs of a network learning from random weights trip.
EARLY_RULES = ("LossNotDecreasing", "Overfit")
EARLY_EPOCHS = 5


def expected_verdicts(verdicts: list[dict], history: list[dict], setting: dict[str, str] | None) -> list[str]:
    """In words, when a rule's finding is what this setting and run are expected to produce."""
    setting = setting or {}
    flagged = [v["rule"] for v in verdicts if v["status"] == "IssuesFound"]
    out = []
    early = [rule for rule in EARLY_RULES if rule in flagged]
    if (
        early
        and setting.get("weights") == "none"
        and setting.get("train-mode") != "head"
        and len(history) <= EARLY_EPOCHS
    ):
        out.append(
            f"Expected for this setting: {', '.join(early)} after {len(history)} epoch(s) of a network trained "
            "from random weights. Its validation loss swings while BatchNorm's running statistics settle, so "
            "these trend rules fire early; they say more about a run with ImageNet weights (--weights imagenet) "
            "or more epochs."
        )
    if "Overtraining" in flagged and history:
        best = max(history, key=lambda h: h["valid_accuracy"])
        if best["epoch"] < history[-1]["epoch"]:
            out.append(
                f"Expected when the data is learnt early: validation accuracy reached {best['valid_accuracy']:.3f} "
                f"at epoch {best['epoch']} of {history[-1]['epoch']}, so the last epochs had little left to "
                "improve, which is what Overtraining reports; fewer epochs would give the same model."
            )
    return out


def findings(
    breakdown: dict[str, float],
    system: dict[str, float],
    history: list[dict],
    verdicts: list[dict],
    device: str,
    workers: int,
    evaluation: dict | None,
    step_ms: float = 0.0,
    setting: dict[str, str] | None = None,
) -> list[str]:
    """Plain-language observations, as SageMaker's ProfilerReport gives them. ``setting``: the job's
    hyperparameters, for what to expect of the rules."""
    out = []
    where = "GPU" if device == "cuda" else "CPU"
    # A share of a microsecond step is no bottleneck: only waits that cost real time count.
    if breakdown.get("data", 0) > 0.3 and breakdown["data"] * step_ms > 5:
        out.append(
            f"The {where} waited on data {breakdown['data']:.0%} of the time: raise the data loader's worker "
            f"count (it was {workers}) or cache decoded images; in head mode turn augmentation off to reuse features."
        )
    elif breakdown:
        out.append(
            f"Data loading kept up: {breakdown.get('data', 0):.0%} of step time was spent waiting for batches, "
            f"{breakdown.get('compute', 0):.0%} in forward and backward, "
            f"{breakdown.get('optimizer', 0):.0%} in the optimizer."
        )
    if device == "cuda" and system.get("gpu_percent_mean") is not None and system["gpu_percent_mean"] < 50:
        out.append(
            f"The GPU was busy only {system['gpu_percent_mean']:.0f}% of the time on average: a larger batch "
            "or a cheaper input pipeline would use it better."
        )
    if system.get("memory_percent_max", 0) > 90:
        out.append(f"Host memory peaked at {system['memory_percent_max']:.0f}%: close to the instance's limit.")
    if device == "cpu" and system.get("process_cpu_percent_mean") is not None:
        out.append(
            f"Training used {system['process_cpu_percent_mean']:.0f}% of the machine's CPU on average; no GPU was used."
        )
    if len(history) >= 2:
        first, last = history[0], history[-1]
        out.append(
            f"Validation accuracy went from {first['valid_accuracy']:.3f} after epoch 1 "
            f"to {last['valid_accuracy']:.3f} "
            f"after epoch {last['epoch']}; training loss from {first['train_loss']:.3f} to {last['train_loss']:.3f}."
        )
    issues = [v for v in verdicts if v["status"] == "IssuesFound"]
    if issues:
        out.extend(f"Rule {v['rule']}: {v['message']}" for v in issues)
        out.extend(expected_verdicts(verdicts, history, setting))
    elif verdicts:
        out.append("No debugger rule found an issue.")
    if evaluation:
        worst = min(evaluation["per_class"].items(), key=lambda kv: kv[1]["f1"])
        out.append(
            f"The weakest class on the {evaluation.get('split', 'test')} split is {worst[0]} "
            f"(F1 {worst[1]['f1']:.2f}, {worst[1]['support']} images)."
        )
    return out
