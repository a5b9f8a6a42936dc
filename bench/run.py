"""``make bench``: every benchmark, one table (bench/results/latest.json and latest.md).

``python bench/run.py serving tuning`` runs only those suites (and writes only their rows).

Each suite runs in a fresh interpreter: torch gives every thread that computes its own OpenMP
team, and a team left behind by one suite (the training ceilings, run in the main thread) slows
the next suite's server thread on a small machine, which would be measuring the benchmark itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row, table, write  # noqa: E402

# In the order of the issues: training, tuning, serving, the Lambda path, the whole pipeline, the audit,
# training with several processes, what grows with the data and the cluster, imbalanced classes,
# calibration and explanations, the backbones, ONNX Runtime against PyTorch, batch predictions, drift checks.
SUITES = (
    "training",
    "tuning",
    "serving",
    "lambda",
    "pipeline",
    "audit",
    "distributed",
    "scale",
    "balance",
    "trust",
    "backbones",
    "onnx",
    "batch",
    "drift",
)


def run_suite(name: str, out: Path) -> None:
    """In this process: one suite's rows, as JSON, to ``out``."""
    import importlib

    rows = importlib.import_module(f"bench_{name}").run()
    out.write_text(json.dumps([asdict(r) for r in rows]))


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        sys.exit(f"unknown suites: {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or SUITES:
            print(f"running {name} ...", flush=True)
            out = Path(tmp) / f"{name}.json"
            subprocess.run([sys.executable, __file__, "--suite", name, str(out)], check=True)
            rows += [Row(**r) for r in json.loads(out.read_text())]
    print(table(json.loads(write(rows).read_text())))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--suite"]:
        run_suite(sys.argv[2], Path(sys.argv[3]))
    else:
        main(sys.argv[1:])
