"""Imbalanced classes: balanced accuracy on the test split with no remedy, with class weights and with
the balanced draw, on the same data made imbalanced 1:10 (the rare classes keep a tenth of their
training images; valid and test stay balanced, so balanced accuracy is what a user of every class sees).

Head mode at 64 px on a random backbone (no download), several seeds, the median: the same job as the
tests' but with its training split cut.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import Row, evaluation_of, table, write

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
RARE_SHARE = 10  # each rare class keeps 1 training image in this many


def _imbalanced(root: Path) -> None:
    from droptrain.synthetic import make_dataset

    make_dataset(root, classes=6, per_class=120, size=64, seed=7)
    for rare in sorted(p for p in (root / "train").iterdir())[:3]:
        for index, path in enumerate(sorted(rare.glob("*.jpg"))):
            if index % RARE_SHARE:
                path.unlink()


def _balanced_accuracy(data: Path, mode: str, seed: int) -> float:
    flags = ("--train-mode", "head", "--epochs", "8", "--lr", "0.01", "--class-balance", mode, "--seed", str(seed))
    return evaluation_of(data, *flags)["balanced_accuracy"]


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _imbalanced(data)
        scores = {
            mode: statistics.median(_balanced_accuracy(data, mode, s) for s in SEEDS)
            for mode in ("off", "weights", "sampler")
        }
    return [
        Row(
            f"balanced accuracy on a 1:{RARE_SHARE} training split, {remedy} (median of {len(SEEDS)} seeds)",
            scores[remedy],
            scores["off"],
            "no remedy",
            "balanced accuracy",
            target="higher than no remedy",
        )
        for remedy in ("weights", "sampler")
    ]


if __name__ == "__main__":
    print(table(json.loads(write(run(), "balance").read_text())))
