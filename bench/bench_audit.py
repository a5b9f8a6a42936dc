"""The dataset audit's speed: decoding, hashing and verifying duplicates (``trainlib.audit``) against
decoding the same images alone, as training does.

Large JPEGs are decoded reduced (the duplicate check reads 64×64), and the audit spreads decoding
over the machine's cores, as it does on the job's instance; the reference is one process decoding
in full. Then the audit at 1k, 10k and 50k images, and its worst case: 5,000 near-identical images
(re-encoded copies of one photograph), where the hash proposes every image to every other and the
groups of verified duplicates keep the comparisons to a few per image.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

from common import Row

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS, CLASSES, SIZE = 450, 4, 224
SCALES = (1_000, 10_000, 50_000)
NEAR_IDENTICAL = 5_000


def _decode_rate(images: list[Path]) -> float:
    from PIL import Image

    started = time.perf_counter()
    for path in images:
        with Image.open(path) as image:
            image.load()
    return len(images) / (time.perf_counter() - started)


def _audit(data: Path) -> tuple[float, dict]:
    from trainlib import audit

    started = time.perf_counter()
    scanned = audit.scan(data)
    report = audit.findings(scanned)
    return len(scanned.samples) / (time.perf_counter() - started), report


def _near_identical(folder: Path, count: int) -> None:
    from importlib.resources import files

    from PIL import Image, ImageEnhance

    rng = random.Random(0)
    with Image.open(files("skimage") / "data" / "astronaut.png") as source:  # a photograph scikit-image ships
        photo = source.convert("RGB").resize((224, 224))
    for split, share in (("train", 0.8), ("test", 0.2)):
        (folder / split / "one").mkdir(parents=True)
        for k in range(round(count * share)):
            side = rng.randint(160, 260)
            image = ImageEnhance.Brightness(photo.resize((side, side))).enhance(rng.uniform(0.85, 1.15))
            image.save(folder / split / "one" / f"{k:05d}.jpg", quality=rng.randint(40, 95))
    (folder / "train" / "other").mkdir()
    for k in range(10):  # a second class, so that the dataset is one
        photo.rotate(90).save(folder / "train" / "other" / f"{k}.jpg", quality=50 + 4 * k)


def run() -> list[Row]:
    sys.path.insert(0, str(ROOT / "training"))
    from droptrain.synthetic import make_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, classes=CLASSES, per_class=PER_CLASS, size=SIZE, seed=0)
        images = sorted(data.rglob("*.jpg"))
        for path in images[:50]:  # warm the page cache for both passes alike
            path.read_bytes()
        decode = _decode_rate(images)
        ours, report = _audit(data)
        rows.append(Row(f"dataset audit, {len(images)} JPEGs at {SIZE} px: decode + sha256 + duplicate signatures and "
                        f"verification + findings ({len(report['duplicates'])} pairs)", ours, decode,
                        "decoding the same images alone (full decode)", "img/s", ">= 0.8 of decoding alone",
                        note=f"audit on {os.cpu_count()} cores, decoding alone on one"))
    for count in SCALES:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            make_dataset(data, classes=10, per_class=count // 10, size=64, seed=1)
            images = sorted(data.rglob("*.jpg"))
            decode = _decode_rate(images)
            ours, report = _audit(data)
            cost = report["duplicate_search"]
            rows.append(Row(f"dataset audit at scale: {len(images):,} JPEGs at 64 px", ours, decode,
                            "decoding the same images alone", "img/s", "no target: the trend",
                            note=f"{cost['proposed'] / len(images):.2f} verifications per image, {len(report['duplicates'])} pairs"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _near_identical(data, NEAR_IDENTICAL)
        images = sorted(data.rglob("*.jpg"))
        decode = _decode_rate(images)
        ours, report = _audit(data)
        cost = report["duplicate_search"]
        rows.append(Row(f"dataset audit, worst case: {len(images):,} near-identical JPEGs (one photograph re-encoded)",
                        ours, decode, "decoding the same images alone", "img/s", "sub-quadratic: a few verifications per image",
                        note=f"{cost['proposed'] / len(images):.2f} verifications per image (all pairs: "
                             f"{len(images) * (len(images) - 1) // 2:,}), {len(report['duplicates'])} pairs reported"))
    return rows
