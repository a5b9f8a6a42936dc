"""Predictions a user can trust: what calibration does to the held-out split, and what an explanation costs.

Calibration: a ResNet-18 trained from scratch in full mode for 4 epochs on 24 synthetic classes (hard
enough to be wrong at times; its test split held out, the median of three seeds), the expected
calibration error on that test split before and after the temperature fitted on its validation split, as
the job's ``evaluation.json`` reports them.

Explanation: the serving code in-process (``trainlib.predictor``) on one 640x480 JPEG, ``explain`` (one
forward and one backward pass to the last stage, the heatmap laid back and encoded as PNG) against
``predict`` (one forward pass), each timed alone, p50 of many; the target is 2.5 times at most.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import Row, evaluation_of, table, timings, write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
SEEDS = (0, 1, 2)


def _calibration(data: Path, seed: int) -> dict:
    flags = ("--train-mode", "full", "--epochs", "4", "--lr", "0.002", "--seed", str(seed))
    return evaluation_of(data, *flags)["calibration"]


def _explain_cost(arch: str) -> tuple[float, float]:
    """(explain p50, predict p50) in seconds, one image, this machine's cores."""
    import torch
    from PIL import Image

    from trainlib import models
    from trainlib.predictor import Classifier, decode
    from trainlib.transforms import eval_transform

    crop, resize = models.ARCHS[arch].preprocessing()
    model = models.build_model(arch, 10).eval()
    classifier = Classifier(
        model,
        [f"c{i}" for i in range(10)],
        "bench",
        eval_transform(crop, resize=resize),
        torch.device("cpu"),
        crop,
        arch,
        resize_size=resize,
    )
    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 64).convert("RGB").save(buffer, format="JPEG")
    image = decode(buffer.getvalue())
    explain = statistics.median(timings(lambda: classifier.explain(image), repeats=15, warmup=2))
    predict = statistics.median(timings(lambda: classifier.predict([image]), repeats=15, warmup=2))
    return explain, predict


def run() -> list[Row]:
    from droptrain.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, classes=24, per_class=40, size=64, seed=11)  # hard enough to be wrong at times
        runs = [_calibration(data, seed) for seed in SEEDS]
    before = statistics.median(r["ece_before"] for r in runs)
    after = statistics.median(r["ece_after"] for r in runs)
    temperatures = ", ".join(f"{r['temperature']:.2f}" for r in runs)
    rows = [
        Row(
            f"expected calibration error on the test split after temperature scaling (median of {len(SEEDS)} "
            "seeds, ResNet-18 from scratch, full mode, 24 classes)",
            after,
            before,
            "the same model before",
            "ECE",
            target="at most before",
            note=f"temperatures {temperatures}",
        )
    ]
    for arch in ("resnet18", "resnet50"):
        explain, predict = _explain_cost(arch)
        rows.append(
            Row(
                f"{arch}: ?explain=true p50 against a prediction's p50, one 640x480 JPEG, in-process",
                explain * 1000,
                predict * 1000,
                "predict",
                "ms",
                target="at most 2.5x",
            )
        )
    return rows


if __name__ == "__main__":
    print(table(json.loads(write(run(), "trust").read_text())))
