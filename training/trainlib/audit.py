"""The dataset audit (docs/architecture.md, "Dataset audit and cost"): every image decoded once, and what
would make a model look better than it is, or worse, reported with the files involved.

* unreadable files;
* exact duplicates (the same bytes) and near duplicates (a 64-bit difference hash within
  ``NEAR_DISTANCE`` bits: resized, recompressed or lightly edited copies) — inside a class, across
  classes (one of the two labels is likely wrong) and across splits (leakage: a test image the model
  trained on);
* class counts and the imbalance ratio; tiny images and extreme aspect ratios; colour modes other
  than RGB (grayscale, CMYK, 16-bit) that training converts silently;
* class names that differ only in case or spaces, and hidden folders (``__MACOSX``,
  ``.ipynb_checkpoints``) that a naive loader would have taken for classes.

Blocking findings (``BLOCKING``, thresholds overridable) stop the run; the rest are warnings.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from trainlib.datasets import SPLITS, _IGNORED_NAMES, _class_images, _descend_single_folder

NEAR_DISTANCE = 6  # of 64 bits: resized and recompressed copies sit at 0-4, different photos far above 10
TINY_SIDE = 32
EXTREME_ASPECT = 5.0
HASH_SIDE = 8
# Defaults of the blocking rules; the job's arguments override them.
MAX_LEAKED_TEST_SHARE = 0.01
MIN_TRAIN_IMAGES = 5
MIN_CLASSES = 2
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass
class Sample:
    path: str  # relative to the dataset root, as the report shows it
    split: str
    label: str
    digest: str = ""
    dhash: int = 0
    size: tuple[int, int] = (0, 0)
    mode: str = ""


@dataclass
class Audit:
    samples: list[Sample] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    hidden_folders: list[str] = field(default_factory=list)
    layout: str = "flat"


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: brightness gradients of a 9×8 grayscale thumbnail. Survives resizing and JPEG."""
    small = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR)
    pixels = list(small.getdata())
    bits = 0
    for row in range(HASH_SIDE):
        for column in range(HASH_SIDE):
            left, right = pixels[row * (HASH_SIDE + 1) + column], pixels[row * (HASH_SIDE + 1) + column + 1]
            bits = (bits << 1) | (left > right)
    return bits


def _hidden_folders(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and (path.name.startswith(".") or path.name in _IGNORED_NAMES):
            if not any(part.startswith(".") or part in _IGNORED_NAMES for part in path.relative_to(root).parts[:-1]):
                found.append(path.relative_to(root).as_posix())
    return found


def dataset_folder(root: Path) -> Path:
    """The folder the report's paths are relative to (one wrapping folder stepped into, as training does)."""
    return _descend_single_folder(root)


def scan(root: Path) -> Audit:
    """Decode every image once: its content hash, perceptual hash, size and colour mode."""
    root = dataset_folder(root)
    audit = Audit(hidden_folders=_hidden_folders(root))
    if (root / "train").is_dir():
        audit.layout = "splits"
        per_split = {split: _class_images(root / split)[0] for split in SPLITS if (root / split).is_dir()}
    else:
        per_split = {"train": _class_images(root)[0]}
    work = [(str(path), path.relative_to(root).as_posix(), split, label)
            for split, classes in per_split.items() for label, paths in classes.items() for path in paths]
    # Decoding is the cost: every core of the instance takes a share (chunks keep the hand-offs few).
    workers = max(1, min(os.cpu_count() or 1, len(work) // 200))
    if workers > 1:
        chunks = [work[i::workers * 4] for i in range(workers * 4)]
        with ProcessPoolExecutor(workers) as pool:
            results = [r for chunk in pool.map(_read_all, chunks) for r in chunk]
    else:
        results = _read_all(work)
    for sample, problem in sorted(results, key=lambda r: (r[0].split, r[0].label, r[0].path)):
        if problem:
            audit.unreadable.append({"path": sample.path, "reason": problem})
        else:
            audit.samples.append(sample)
    return audit


def _read_all(work: list[tuple[str, str, str, str]]) -> list[tuple[Sample, str | None]]:
    return [_read(*item) for item in work]


def _read(path: str, relative: str, split: str, label: str) -> tuple[Sample, str | None]:
    """One image decoded once: its content hash, perceptual hash, size and mode; or why it cannot be read."""
    sample = Sample(relative, split, label)
    try:
        data = Path(path).read_bytes()
        sample.digest = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:  # the bytes already read: no second read
            sample.mode, sample.size = image.mode, image.size
            image.draft("RGB", (64, 64))  # large JPEGs decode reduced (64 px at least): the hash reads 9×8
            image.load()
            sample.dhash = difference_hash(image)
    except _DECODE_ERRORS as exc:
        return sample, f"{type(exc).__name__}: {exc}"[:200]
    return sample, None


def _pairs(samples: list[Sample]) -> Iterable[tuple[Sample, Sample, int]]:
    """Pairs of samples whose hashes are within ``NEAR_DISTANCE``, by bucketing on hash bands (any pair
    that close shares at least one of 8 eight-bit bands unchanged when distance ≤ 7)."""
    bands: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        for band in range(8):
            bands[(band, (sample.dhash >> (8 * band)) & 0xFF)].append(index)
    seen: set[tuple[int, int]] = set()
    for members in bands.values():
        for a, b in itertools.combinations(members, 2):
            if (a, b) in seen:
                continue
            seen.add((a, b))
            distance = bin(samples[a].dhash ^ samples[b].dhash).count("1")
            if distance <= NEAR_DISTANCE:
                yield samples[a], samples[b], distance


def _duplicate(a: Sample, b: Sample, distance: int) -> dict[str, Any]:
    exact = a.digest == b.digest
    if a.split != b.split:
        where = "across splits"
    elif a.label != b.label:
        where = "across classes"
    else:
        where = "within a class"
    return {"kind": "exact" if exact else "near", "where": where, "distance": 0 if exact else distance,
            "files": [{"path": s.path, "split": s.split, "class": s.label} for s in (a, b)]}


def _twins(labels: Iterable[str]) -> list[list[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        groups["".join(label.lower().split()).replace("_", "").replace("-", "")].add(label)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def findings(audit: Audit, max_leaked_test_share: float = MAX_LEAKED_TEST_SHARE,
             min_train_images: int = MIN_TRAIN_IMAGES, min_classes: int = MIN_CLASSES) -> dict[str, Any]:
    """The report: every finding with its files, the blocking ones named, and the counts behind them."""
    duplicates = [_duplicate(a, b, d) for a, b, d in _pairs(audit.samples)]
    counts: dict[str, Counter] = defaultdict(Counter)
    for sample in audit.samples:
        counts[sample.split][sample.label] += 1
    train = counts.get("train", Counter())
    modes = Counter(sample.mode for sample in audit.samples)
    odd_modes = [{"path": s.path, "mode": s.mode} for s in audit.samples if s.mode != "RGB"]
    tiny = [{"path": s.path, "size": list(s.size)} for s in audit.samples if min(s.size) < TINY_SIDE]
    extreme = [{"path": s.path, "size": list(s.size)} for s in audit.samples
               if min(s.size) and max(s.size) / min(s.size) > EXTREME_ASPECT]
    # Leakage: a held-out image that duplicates one in another split (AUDIT_FIX drops these, never train's).
    leaked = [d for d in duplicates if d["where"] == "across splits"]
    held_out = sorted({f["path"] for d in leaked for f in d["files"] if f["split"] in ("valid", "test")})
    leaked_test = [p for p in held_out if any(f["path"] == p and f["split"] == "test" for d in leaked for f in d["files"])]
    test_total = sum(counts.get("test", Counter()).values())
    blocking, kinds = [], []
    if test_total and len(leaked_test) / test_total > max_leaked_test_share:
        kinds.append("leakage")
        blocking.append(f"{len(leaked_test)} test images duplicate images of other splits ({len(leaked_test) / test_total:.1%} "
                        f"of the test split; at most {max_leaked_test_share:.0%} allowed): the test accuracy would be inflated")
    small = sorted(label for label, n in train.items() if n < min_train_images)
    if small:
        kinds.append("small_classes")
        blocking.append(f"classes with fewer than {min_train_images} training images: "
                        + ", ".join(f"{label} ({train[label]})" for label in small))
    usable = [label for label, n in train.items() if n >= min_train_images]
    if len(usable) < min_classes:
        kinds.append("few_classes")
        blocking.append(f"fewer than {min_classes} classes with enough images ({len(usable)})")
    sizes = [n for n in train.values() if n]
    return {
        "layout": audit.layout, "images": len(audit.samples) + len(audit.unreadable),
        "classes": sorted(train), "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "imbalance_ratio": round(max(sizes) / min(sizes), 2) if sizes else None,
        "unreadable": audit.unreadable, "duplicates": duplicates,
        "duplicate_summary": dict(Counter(f"{d['kind']} {d['where']}" for d in duplicates)),
        "tiny_images": tiny, "extreme_aspect": extreme, "colour_modes": dict(modes), "not_rgb": odd_modes,
        "class_name_twins": _twins(set().union(*[set(c) for c in counts.values()]) if counts else set()),
        "hidden_folders": audit.hidden_folders, "blocking": blocking, "blocking_kinds": kinds,
        "thresholds": {"near_distance_bits": NEAR_DISTANCE, "max_leaked_test_share": max_leaked_test_share,
                       "min_train_images": min_train_images, "min_classes": min_classes, "tiny_side": TINY_SIDE,
                       "extreme_aspect": EXTREME_ASPECT},
        "leaked": held_out,
    }
