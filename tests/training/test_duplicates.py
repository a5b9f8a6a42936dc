"""Duplicates verified, not guessed: measured on a labelled benchmark of real images, an honest
low-detail dataset left alone, and the cost bounded on near-identical images."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections import defaultdict

import duplicate_benchmark as benchmark
import numpy as np
from PIL import Image, ImageEnhance

from helpers import DEADLINE, TRAINING_DIR
from trainlib import duplicates


def _groups_of(report: dict, files: list[str]) -> dict[str, int]:
    index = {path: i for i, path in enumerate(files)}
    pairs = [
        duplicates.Pair(index[d["files"][0]["path"]], index[d["files"][1]["path"]], d["kind"], d["score"], 0)
        for d in report["duplicates"]
    ]
    return dict(zip(files, duplicates.groups(len(files), pairs)))


def test_the_benchmark_meets_its_precision_and_recall_and_blocks_no_negative(tmp_path):
    """Run as the Processing job runs the audit (training/audit.py, its report read back)."""
    items = benchmark.build(seed=0)
    sources = benchmark.write(items, tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "audit.py", "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")],
        cwd=TRAINING_DIR,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    files = sorted(sources)
    group = _groups_of(report, files)
    by_source = defaultdict(list)
    for path in files:
        by_source[sources[path]].append(path)
    true_pairs = [(a, b) for paths in by_source.values() for i, a in enumerate(paths) for b in paths[i + 1 :]]
    recalled = sum(group[a] == group[b] for a, b in true_pairs)
    found = [tuple(f["path"] for f in d["files"]) for d in report["duplicates"]]
    false = [pair for pair in found if sources[pair[0]] != sources[pair[1]]]
    recall, precision = recalled / len(true_pairs), 1 - len(false) / len(found)
    blocked_negatives = [
        p for p in report["leaked_test"] if any(sources[a] != sources[b] and p in (a, b) for a, b in found)
    ]
    families = defaultdict(lambda: [0, 0])
    for a, b in true_pairs:
        families[a.split("/")[1]][0] += group[a] == group[b]
        families[a.split("/")[1]][1] += 1
    print(
        f"\nduplicate benchmark: {len(items)} images, {len(true_pairs)} true pairs; pair recall {recall:.3f} "
        f"({', '.join(f'{k} {v[0]}/{v[1]}' for k, v in sorted(families.items()))}), pair precision {precision:.3f} "
        f"({len(false)} false of {len(found)}), negatives blocked: {len(blocked_negatives)}"
    )
    assert len(true_pairs) > 300 and len(items) > 1000
    assert recall >= 0.95 and precision >= 0.99, (recall, precision, false[:5])
    assert blocked_negatives == []


def _variant(image: Image.Image, rng: random.Random) -> Image.Image:
    side = rng.randint(160, 260)
    image = ImageEnhance.Brightness(image.resize((side, side))).enhance(rng.uniform(0.85, 1.15))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(40, 95))
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_near_identical_images_cost_a_few_comparisons_each():
    """300 re-encoded copies of one photograph: one group, each image verified against a handful of
    leaders (never the 44,850 pairs), and every pair reported is a verified one."""
    rng = random.Random(3)
    photo = benchmark.photos()[0].resize((224, 224))
    signatures = [duplicates.signature(_variant(photo, rng)) for _ in range(300)]
    pairs, cost = duplicates.find(signatures, [str(i) for i in range(len(signatures))])
    assert len(set(duplicates.groups(len(signatures), pairs))) <= 3
    assert cost["proposed"] <= duplicates.MAX_PROPOSED * len(signatures) and cost["proposed"] < 3 * len(signatures), (
        cost
    )
    assert len(pairs) < 2 * len(signatures) and all(p.score >= duplicates.SIMILARITY for p in pairs)


def test_a_plain_image_proposes_nothing_but_its_exact_copies_are_found():
    rng = np.random.default_rng(0)
    flats = [Image.fromarray((200 + rng.normal(0, 1, (48, 48))).clip(0, 255).astype(np.uint8)) for _ in range(20)]
    signatures = [duplicates.signature(image) for image in flats] + [duplicates.signature(flats[0])]
    pairs, cost = duplicates.find(signatures, [str(i) for i in range(20)] + ["copy"])
    assert [(p.a, p.b, p.kind) for p in pairs] == [(0, 20, "exact")], "the same pixels in another file"
    assert cost["low_detail"] == 20 and cost["proposed"] == 0
