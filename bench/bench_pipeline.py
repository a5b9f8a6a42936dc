"""Pipeline: ``droptrain demo`` end to end on this machine, wall time by phase.

The phases are those the demo's summary prints: the synthetic dataset, upload to the tuning job's
start, tuning, the final training job (debugging and profiling on), deployment, and the first
predictions over HTTP. The reference column is the whole run, so each ratio is the phase's share.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Row


def run() -> list[Row]:
    from droptrain.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(Path(tmp) / "home", say=lambda line: None)
    total = result["total"]
    rows = [
        Row(f"droptrain demo: {phase}", seconds, total, "the whole demo", "s")
        for phase, seconds in result["phases"].items()
    ]
    rows.append(
        Row(
            "droptrain demo: total",
            total,
            0,
            f"{len(result['predictions'])} test images predicted, test accuracy {result['test_accuracy']:.2f}",
            "s",
        )
    )
    return rows


if __name__ == "__main__":
    import json

    from common import table, write

    print(table(json.loads(write(run(), "pipeline").read_text())))
