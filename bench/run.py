"""``make bench``: every benchmark, one table (bench/results/latest.json and latest.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lambda  # noqa: E402
import bench_training  # noqa: E402
from common import table, write  # noqa: E402

SUITES = {"training": bench_training.run, "lambda": bench_lambda.run}


def main(names: list[str]) -> None:
    rows = []
    for name in names or list(SUITES):
        print(f"running {name} ...", flush=True)
        rows += SUITES[name]()
    print(table(json.loads(write(rows).read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
