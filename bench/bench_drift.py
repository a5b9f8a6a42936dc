"""The drift check: its time on 10,000 captured images, and its false-alarm rate at its level on real embeddings.

A ResNet-18 artifact at 224 px (trained as SageMaker trains it), its reference kept as the final job keeps
it (1,000 training images' embeddings), and 10,000 capture records written as SageMaker writes them (400
distinct 224 px JPEGs of the training distribution, each captured 25 times: the cost is per record).
``training/drift_check.py`` runs on them in this process, as the Processing job runs it, and is timed
against ten minutes ("minutes on a small instance"; this is 2 cores). Then the false-alarm rate: 100
random splits of 400 same-distribution images' real embeddings into two halves (200 against 200), each
with the job's 200 permutations, called drift at the job's level (target: at most 5%).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import Row

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "training")]
CAPTURES = 10_000
DISTINCT = 400
CHECKS = 100


def _captures(folder: Path, images: list[Path]) -> None:
    from chalice_app import capture

    start = datetime(2026, 12, 6, 15, 0, tzinfo=timezone.utc)
    for index in range(CAPTURES):
        when = start + timedelta(seconds=index)
        line = capture.record(images[index % len(images)].read_bytes(), "image/jpeg", b"{}", when, f"e{index}")
        key = capture.key("c", "droptrain-bench", "AllTraffic", when, f"e{index}")
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_text(capture.json_line(line))


def run() -> list[Row]:
    import drift_check
    import torch
    from bench_serving import train_model

    from droptrain.synthetic import make_dataset
    from trainlib import drift
    from trainlib.models import backbone_of
    from trainlib.predictor import Classifier, decode

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=40, size=224, seed=0)
        make_dataset(tmp / "fresh", classes=4, per_class=DISTINCT // 4, size=224, seed=1)
        model_dir = tmp / "model"
        archive = train_model(tmp / "data", tmp / "work", "resnet18")
        drift_check.model_dir(archive, model_dir)
        meta = json.loads((model_dir / "model.json").read_text())
        classifier = Classifier.load(model_dir, device="cpu")
        train = [(p, 0) for p in sorted((tmp / "data" / "train").rglob("*.jpg"))]
        drift.reference_step(classifier.model, meta, train, model_dir)
        fresh = sorted((tmp / "fresh").rglob("*.jpg"))
        _captures(tmp / "captures", fresh)
        args = drift_check.parse_args(
            ["--model", str(model_dir), "--captures", str(tmp / "captures"), "--out", str(tmp / "out")]
        )
        started = time.perf_counter()
        verdict = drift_check.run(args)
        seconds = time.perf_counter() - started
        tensors = torch.stack([classifier.transform(decode(p.read_bytes())) for p in fresh])
        embeddings = drift.embed(backbone_of(classifier.model, classifier.arch), tensors.split(64))
    generator = torch.Generator().manual_seed(0)
    alarms = 0
    for check in range(CHECKS):
        order = torch.randperm(embeddings.shape[0], generator=generator)
        _, p = drift.mmd_test(embeddings[order[:200]], embeddings[order[200:]], seed=check)
        alarms += p < drift.ALPHA
    return [
        Row(
            f"drift check (training/drift_check.py), {CAPTURES:,} captured 224 px JPEGs, ResNet-18, 2 cores",
            seconds,
            600.0,
            "ten minutes",
            "s",
            target="minutes",
            note=f"verdict {verdict['status']} (p = {verdict.get('p_value')}) on a same-distribution sample",
        ),
        Row(
            f"drift check false alarms at p < {drift.ALPHA}, {CHECKS} same-distribution checks (200 vs 200)",
            alarms / CHECKS,
            0.05,
            "the target",
            "share",
            target="<= 0.05",
        ),
    ]


if __name__ == "__main__":
    from common import table, write

    print(table(json.loads(write(run(), "drift").read_text())))
