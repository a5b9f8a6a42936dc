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
from collections.abc import Callable
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


def _measured(make: Callable[[Path], None], what: str, target: str, note: Callable[[int, dict], str]) -> Row:
    """One row: the dataset ``make`` writes, audited, against decoding the same images alone."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make(data)
        images = sorted(data.rglob("*.jpg"))
        for path in images[:50]:  # warm the page cache for both passes alike
            path.read_bytes()
        decode = _decode_rate(images)
        ours, report = _audit(data)
    return Row(
        what.format(n=len(images)),
        ours,
        decode,
        "decoding the same images alone",
        "img/s",
        target,
        note=note(len(images), report),
    )


def _per_image(n: int, report: dict) -> str:
    return (
        f"{report['duplicate_search']['proposed'] / n:.2f} verifications per image, {len(report['duplicates'])} pairs"
    )


def run() -> list[Row]:
    sys.path.insert(0, str(ROOT / "training"))
    from droptrain.synthetic import make_dataset

    rows = [
        _measured(
            lambda d: make_dataset(d, classes=CLASSES, per_class=PER_CLASS, size=SIZE, seed=0),
            f"dataset audit, {{n}} JPEGs at {SIZE} px: decode + sha256 + duplicate signatures and verification "
            "+ findings",
            ">= 0.8 of decoding alone",
            lambda n, r: f"{len(r['duplicates'])} pairs; audit on {os.cpu_count()} cores, decoding alone on one",
        )
    ]
    for count in SCALES:
        rows.append(
            _measured(
                lambda d, count=count: make_dataset(d, classes=10, per_class=count // 10, size=64, seed=1),
                "dataset audit at scale: {n:,} JPEGs at 64 px",
                "no target: the trend",
                _per_image,
            )
        )
    rows.append(
        _measured(
            lambda d: _near_identical(d, NEAR_IDENTICAL),
            "dataset audit, worst case: {n:,} near-identical JPEGs (one photograph re-encoded)",
            "sub-quadratic: a few verifications per image",
            lambda n, r: _per_image(n, r) + f" (all pairs: {n * (n - 1) // 2:,})",
        )
    )
    return rows
