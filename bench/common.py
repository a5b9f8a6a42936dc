"""What every benchmark shares: the machine, repeated timing, one training run's evaluation, and the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    what: str
    ours: float
    reference: float
    reference_name: str
    unit: str
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` uncounted ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(timings(fn, repeats, warmup))


def write(rows: list[Row], name: str = "latest") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table(data))
    return RESULTS / f"{name}.json"


def table(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; "
        f"Python {m['python']}, torch {m.get('torch', '-')}; {data['time']}",
        "",
        "| what | ours | reference (same run) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        ours = f"{r['ours']:.4g} {r['unit']}"
        ref = f"{r['reference']:.4g} {r['unit']} ({r['reference_name']})" if r["reference"] else r["reference_name"]
        ratio = f"{r['ratio']:.2f}" if r["reference"] else "-"
        note = f" — {r['note']}" if r["note"] else ""
        lines.append(f"| {r['what']}{note} | {ours} | {ref} | {ratio} | {r['target']} |")
    return "\n".join(lines) + "\n"


def evaluation_of(data: Path, *flags: str) -> dict:
    """``evaluation.json`` of one ``train.py`` run on ``data`` from scratch (ResNet-18, 64 px, no checkpoints,
    no profiler) with ``flags`` added, in a fresh interpreter as a job runs."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "train.py",
                *("--data-dir", str(data), "--model-dir", f"{tmp}/m", "--output-data-dir", f"{tmp}/o"),
                *("--no-checkpoints", "--arch", "resnet18", "--weights", "none", "--image-size", "64"),
                *("--batch-size", "32", "--workers", "0", "--profile", "off", *flags),
            ],
            cwd=Path(__file__).resolve().parent.parent / "training",
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(Path(tmp, "o", "evaluation.json").read_text())
