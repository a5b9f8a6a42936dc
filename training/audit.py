#!/usr/bin/env python
"""The dataset audit, as a SageMaker Processing job runs it in the training image (and the local
runtime runs it the same way): the dataset (a folder, or one archive) in, ``audit.json`` and
``audit.html`` out. Exit status 0 whatever it finds: the pipeline reads ``audit.json`` and decides.
A dataset too large for one instance is scanned by several (``--mode shard``, each its share) and
audited by one more job over their shard files (``--mode merge``: trainlib/audit_shards.py).

    python audit.py --data-dir /opt/ml/processing/input/data --out-dir /opt/ml/processing/output
"""

from __future__ import annotations

import os

# The audit's parallelism is its processes, one per core (trainlib.audit.scan). The numerical
# libraries' thread pools on top of them spin-wait for cores the other processes hold: on a busy
# machine the audit burnt four times the CPU and took five times as long. One thread each, set
# before numpy loads.
for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

import argparse
import base64
import html
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from trainlib import audit, audit_shards, duplicates
from trainlib.datasets import resolve_dataset_root
from trainlib.errors import TrainingError

THUMB = 96
MAX_PAIRS_SHOWN = 60


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Audit an image-classification dataset before training on it.")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/opt/ml/processing/input/data"),
        help="the dataset: a folder or one archive",
    )
    p.add_argument(
        "--out-dir", type=Path, default=Path("/opt/ml/processing/output"), help="where audit.json and audit.html go"
    )
    p.add_argument(
        "--max-leaked-test-share",
        type=float,
        default=audit.MAX_LEAKED_TEST_SHARE,
        help="block when more than this share of the test split duplicates images of other splits",
    )
    p.add_argument(
        "--min-train-images",
        type=int,
        default=audit.MIN_TRAIN_IMAGES,
        help="block when a class has fewer training images",
    )
    p.add_argument(
        "--min-classes", type=int, default=audit.MIN_CLASSES, help="block when fewer classes have enough images"
    )
    p.add_argument(
        "--mode",
        choices=["whole", "shard", "merge"],
        default="whole",
        help="whole: audit the dataset; shard: scan this instance's share of it and write its shard file "
        "(several instances, ShardedByS3Key); merge: audit the shard files found under --data-dir",
    )
    return p


def _thumbnail(image: Image.Image) -> str:
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def file_thumbnails(root: Path) -> Callable[[str], str]:
    def thumbnail(path: str) -> str:
        with Image.open(root / path) as image:
            return _thumbnail(image)

    return thumbnail


def signature_thumbnails(scanned: audit.Audit) -> Callable[[str], str]:
    """The merge job has no images, only what the shards kept: each image's grey 64x64 signature."""
    by_path = {s.path: s.signature for s in scanned.samples if s.signature is not None}

    def thumbnail(path: str) -> str:
        return _thumbnail(Image.fromarray(duplicates.thumbnail(by_path[path])))

    return thumbnail


def render(report: dict, thumbnail: Callable[[str], str]) -> str:
    """One self-contained page: the blocking findings, a class histogram, and duplicate pairs side by side."""
    e = html.escape
    counts = report["counts"].get("train", {})
    top = max(counts.values(), default=1)
    bars = "".join(
        f'<tr><th>{e(label)}</th><td><span class="bar" style="width:{200 * n / top:.0f}px"></span> {n}</td></tr>'
        for label, n in counts.items()
    )
    pairs = []
    for duplicate in report["duplicates"][:MAX_PAIRS_SHOWN]:
        cells = "".join(
            f'<figure><img alt="{e(f["path"])}" src="{thumbnail(f["path"])}">'
            f"<figcaption>{e(f['split'])}/{e(f['class'])}<br>{e(Path(f['path']).name)}</figcaption></figure>"
            for f in duplicate["files"]
        )
        pairs.append(
            f'<div class="pair"><p>{e(duplicate["kind"])} duplicate, {e(duplicate["where"])}, '
            f"similarity {duplicate['score']:.2f}</p>{cells}</div>"
        )

    def listed(items) -> str:
        return "".join(f"<li>{e(json.dumps(i) if not isinstance(i, str) else i)}</li>" for i in items)

    sections = [
        ("Blocking", listed(report["blocking"]) or "<li>none</li>"),
        ("Warnings", listed(report["warnings"]) or "<li>none</li>"),
        ("Unreadable files", listed(report["unreadable"]) or "<li>none</li>"),
        ("Class-name twins", listed(report["class_name_twins"]) or "<li>none</li>"),
        ("Hidden folders", listed(report["hidden_folders"]) or "<li>none</li>"),
        ("Tiny or extreme images", listed((report["tiny_images"] + report["extreme_aspect"])[:50]) or "<li>none</li>"),
    ]
    body = "".join(f"<h2>{title}</h2><ul>{items}</ul>" for title, items in sections)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Dataset audit</title>
<style>body{{font:15px system-ui,sans-serif;margin:1.5rem;color:#1b1f24}}
.bar{{display:inline-block;height:.8rem;background:#0b5cad}}
.pair{{display:inline-block;border:1px solid #c9d1d9;margin:.3rem;padding:.3rem;vertical-align:top}}
figure{{display:inline-block;margin:.2rem}}
figcaption{{font-size:.75rem;max-width:{THUMB}px;overflow-wrap:anywhere}} th{{text-align:left;padding-right:1rem}}
</style></head><body>
<h1>Dataset audit</h1><p>{report["images"]} images, {len(report["classes"])} classes,
imbalance ratio {report["imbalance_ratio"]}.</p>
<h2>Training images per class</h2><table>{bars}</table>{body}
<h2>Duplicates ({len(report["duplicates"])})</h2>{"".join(pairs) or "<p>none</p>"}</body></html>"""


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audit-") as work:
        if args.mode == "merge":
            scanned = audit_shards.read(args.data_dir)
            thumbnail = signature_thumbnails(scanned)
        else:
            root = resolve_dataset_root(args.data_dir, Path(work))
            scanned = audit.scan(root)
            if args.mode == "shard":
                written = audit_shards.write(scanned, args.out_dir)
                print(f"audit shard: {len(scanned.samples)} images scanned, {written.name}", flush=True)
                return {"images": len(scanned.samples) + len(scanned.unreadable)}
            thumbnail = file_thumbnails(audit.dataset_folder(root))
        report = audit.findings(scanned, args.max_leaked_test_share, args.min_train_images, args.min_classes)
        report["seconds"] = round(time.perf_counter() - started, 3)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "audit.json").write_text(json.dumps(report, indent=2))
        (args.out_dir / "audit.html").write_text(render(report, thumbnail))
    print(
        f"audit: {report['images']} images, {len(report['duplicates'])} duplicate pairs, "
        f"{len(report['blocking'])} blocking findings",
        flush=True,
    )
    return report


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except TrainingError as exc:  # an archive that cannot be opened: the report says so, and it blocks
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
