"""The dataset audit's speed: decoding and hashing every image (``trainlib.audit.scan``: content hash,
perceptual hash, size and colour mode) against decoding the same images alone, as training does.

Large JPEGs are decoded reduced (the hash needs 9×8 pixels), and the audit spreads the images over the
machine's cores, as it does on the job's instance; the reference is one process decoding in full. The
target: the audit never costs more than 1.25× that (it runs once, before a tuning job that decodes the
same images in every trial).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import Row

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS, CLASSES, SIZE = 450, 4, 224


def run() -> list[Row]:
    sys.path.insert(0, str(ROOT / "training"))
    from PIL import Image

    from droptrain.synthetic import make_dataset
    from trainlib import audit

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, classes=CLASSES, per_class=PER_CLASS, size=SIZE, seed=0)
        images = sorted(data.rglob("*.jpg"))
        for path in images[:50]:  # warm the page cache for both passes alike
            path.read_bytes()

        started = time.perf_counter()
        for path in images:
            with Image.open(path) as image:
                image.load()
        decode = len(images) / (time.perf_counter() - started)

        started = time.perf_counter()
        scanned = audit.scan(data)
        report = audit.findings(scanned)
        ours = len(scanned.samples) / (time.perf_counter() - started)
    return [Row(f"dataset audit, {len(images)} JPEGs at {SIZE} px: decode + sha256 + perceptual hash + findings "
                f"({len(report['duplicates'])} near/exact pairs)", ours, decode, "decoding the same images alone (full decode)",
                "img/s", ">= 0.8 of decoding alone", note=f"audit on {os.cpu_count()} cores, decoding alone on one")]
