"""The dataset audit (docs/architecture.md, "Dataset audit and cost"): every image decoded once, and what
would make a model look better than it is, or worse, reported with the files involved.

* unreadable files;
* duplicates (``trainlib.duplicates``: exact copies, and near ones a hash proposes and a comparison
  of the two images verifies) — inside a class, across classes (a possible mislabel: a warning,
  never a reason to stop) and across splits within a class (leakage: a test image the model trained on);
* class counts and the imbalance ratio; tiny images and extreme aspect ratios; colour modes other
  than RGB (grayscale, CMYK, 16-bit) that training converts silently;
* class names that differ only in case or spaces, and hidden folders (``__MACOSX``,
  ``.ipynb_checkpoints``) that a naive loader would have taken for classes.

Blocking findings (thresholds overridable) stop the run; the rest are warnings, each kind told once
with a few examples (``warnings``), the full lists in the report.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from trainlib import duplicates
from trainlib.audit_words import EXAMPLES, pair_words, warning_lines
from trainlib.datasets import _IGNORED_NAMES, SPLITS, _class_images, _descend_single_folder

TINY_SIDE = 32
EXTREME_ASPECT = 5.0
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
    signature: duplicates.Signature | None = None
    size: tuple[int, int] = (0, 0)
    mode: str = ""


@dataclass
class Audit:
    samples: list[Sample] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    hidden_folders: list[str] = field(default_factory=list)
    layout: str = "flat"


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
    work = [
        (str(path), path.relative_to(root).as_posix(), split, label)
        for split, classes in per_split.items()
        for label, paths in classes.items()
        for path in paths
    ]
    # Decoding is the cost: every core the process may run on takes a share (chunks keep the hand-offs
    # few); a container given one core of the machine gets no pool, which would only take turns on it.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(cores, len(work) // 200))
    if workers > 1:
        chunks = [work[i :: workers * 4] for i in range(workers * 4)]
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
            # Large JPEGs decode reduced: the duplicate check reads 64×64.
            image.draft("RGB", (duplicates.SOURCE, duplicates.SOURCE))
            image.load()
            sample.signature = duplicates.signature(image)
    except _DECODE_ERRORS as exc:
        return sample, f"{type(exc).__name__}: {exc}"[:200]
    return sample, None


_ORDER = {split: rank for rank, split in enumerate(SPLITS)}  # train, valid, test: the later copy is the leak


def _where(a: Sample, b: Sample) -> str:
    if a.label != b.label:
        return "across classes"  # label noise, whichever splits: a copy labelled otherwise inflates nothing
    return "across splits" if a.split != b.split else "within a class"


def _duplicate(a: Sample, b: Sample, pair: duplicates.Pair) -> dict[str, Any]:
    if _ORDER.get(a.split, 0) > _ORDER.get(b.split, 0):
        a, b = b, a
    return {
        "kind": pair.kind,
        "where": _where(a, b),
        "score": pair.score,
        "hash_bits": pair.bits,
        "files": [{"path": s.path, "split": s.split, "class": s.label} for s in (a, b)],
    }


def _indirect_leaks(samples: list[Sample], pairs: list[duplicates.Pair]) -> list[duplicates.Pair]:
    """Held-out images in a group of duplicates with an earlier split's image of their class but no
    verified pair with one (both matched a third): compared directly, a few candidates each."""
    group = duplicates.groups(len(samples), pairs)
    members: dict[int, list[int]] = defaultdict(list)
    for index, root in enumerate(group):
        members[root].append(index)
    direct = {(p.a, p.b) for p in pairs} | {(p.b, p.a) for p in pairs}
    found = []
    for indices in members.values():
        if len({samples[i].split for i in indices}) < 2:
            continue
        for m in indices:
            earlier = [
                i
                for i in indices
                if samples[i].label == samples[m].label
                and _ORDER.get(samples[i].split, 0) < _ORDER.get(samples[m].split, 0)
            ]
            if not earlier or any((m, i) in direct for i in earlier):
                continue
            mine = duplicates.Views(duplicates.thumbnail(samples[m].signature))
            for i in earlier[:8]:
                score = duplicates.similarity(mine, duplicates.Views(duplicates.thumbnail(samples[i].signature)))
                if score >= duplicates.SIMILARITY:
                    found.append(duplicates.Pair(i, m, "near", round(score, 4), None))
                    break
    return found


def _twins(labels: Iterable[str]) -> list[list[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        groups["".join(label.lower().split()).replace("_", "").replace("-", "")].add(label)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def _leakage(duplicates_found: list[dict], test_total: int, share: float) -> tuple[list[str], list[str], str | None]:
    """The held-out copies of earlier splits' images (what AUDIT_FIX drops), the test ones among them,
    and the blocking finding when the test ones are more than ``share`` of the test split."""
    leaks = [d for d in duplicates_found if d["where"] == "across splits"]
    held_out = sorted({d["files"][1]["path"] for d in leaks if d["files"][1]["split"] in ("valid", "test")})
    test_leaks = [d for d in leaks if d["files"][1]["split"] == "test"]
    leaked_test = sorted({d["files"][1]["path"] for d in test_leaks})
    if not test_total or len(leaked_test) / test_total <= share:
        return held_out, leaked_test, None
    return (
        held_out,
        leaked_test,
        (
            f"{len(leaked_test)} test images duplicate images of other splits "
            f"({len(leaked_test) / test_total:.1%} of the test split; at most {share:.0%} allowed): "
            "the test accuracy would be inflated. E.g. "
            + "; ".join(pair_words(d) for d in test_leaks[:EXAMPLES])
            + ". Set AUDIT_FIX=true to drop the held-out copies, or raise AUDIT_MAX_LEAKED_TEST_SHARE to accept them"
        ),
    )


_SEARCH_THRESHOLDS = {
    "similarity": duplicates.SIMILARITY,
    "plain_similarity": duplicates.SURE,
    "hash_bits": duplicates.NEAR_BITS,
    "min_detail": duplicates.MIN_DETAIL,
    "tiny_side": TINY_SIDE,
    "extreme_aspect": EXTREME_ASPECT,
}


SAME_CLASS_SHARE = 0.8  # of both classes' images with a copy in the other: one class under two names


def _same_classes(found: list[dict], totals: Counter) -> list[str]:
    """Blocking reasons for pairs of classes that hold the same images: a model cannot tell them apart,
    and one of the two names is wrong for every image."""
    copied: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for d in found:
        if d["where"] != "across classes":
            continue
        a, b = d["files"]
        pair = tuple(sorted((a["class"], b["class"])))
        copied[pair][a["class"]].add(a["path"])  # type: ignore[index]
        copied[pair][b["class"]].add(b["path"])  # type: ignore[index]
    reasons = []
    for (x, y), paths in sorted(copied.items()):
        if all(totals[c] and len(paths[c]) / totals[c] >= SAME_CLASS_SHARE for c in (x, y)):
            reasons.append(
                f"classes {x} and {y} hold the same images ({len(paths[x])} of {totals[x]} and "
                f"{len(paths[y])} of {totals[y]} have a copy in the other): merge them or fix the labels"
            )
    return reasons


def _too_few(
    train: Counter, min_train_images: int, min_classes: int, unreadable: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """The blocking findings about counts: classes too small to learn, too few classes to classify;
    where unreadable files are why, the finding says so."""
    found = []
    why = (
        f" ({len(unreadable)} files could not be read as JPEG or PNG images, e.g. "
        + "; ".join(f"{u['path']}: {u['reason']}" for u in unreadable[:EXAMPLES])
        + ")"
        if unreadable
        else ""
    )
    small = sorted(label for label, n in train.items() if n < min_train_images)
    if small:
        listed = ", ".join(f"{label} ({train[label]})" for label in small)
        found.append(("small_classes", f"classes with fewer than {min_train_images} training images: {listed}{why}"))
    usable = [label for label, n in train.items() if n >= min_train_images]
    if len(usable) < min_classes:
        found.append(("few_classes", f"fewer than {min_classes} classes with enough images ({len(usable)}){why}"))
    return found


def findings(
    audit: Audit,
    max_leaked_test_share: float = MAX_LEAKED_TEST_SHARE,
    min_train_images: int = MIN_TRAIN_IMAGES,
    min_classes: int = MIN_CLASSES,
) -> dict[str, Any]:
    """The report: every finding with its files, the blocking ones named, and the counts behind them."""
    samples = audit.samples
    pairs, cost = duplicates.find([s.signature for s in samples], [s.digest for s in samples])
    pairs += _indirect_leaks(samples, pairs)
    found = [_duplicate(samples[p.a], samples[p.b], p) for p in pairs]
    counts: dict[str, Counter] = defaultdict(Counter)
    for sample in samples:
        counts[sample.split][sample.label] += 1
    train = counts.get("train", Counter())
    held_out, leaked_test, leak = _leakage(found, sum(counts.get("test", Counter()).values()), max_leaked_test_share)
    blocking, kinds = ([leak], ["leakage"]) if leak else ([], [])
    for kind, reason in _too_few(train, min_train_images, min_classes, audit.unreadable):
        kinds.append(kind)
        blocking.append(reason)
    for reason in _same_classes(found, sum(counts.values(), Counter())):
        kinds.append("identical_classes")
        blocking.append(reason)
    sizes = [n for n in train.values() if n]
    report = {
        "layout": audit.layout,
        "images": len(samples) + len(audit.unreadable),
        "classes": sorted(train),
        "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "imbalance_ratio": round(max(sizes) / min(sizes), 2) if sizes else None,
        "unreadable": audit.unreadable,
        "duplicates": found,
        "duplicate_summary": dict(Counter(f"{d['kind']} {d['where']}" for d in found)),
        "possible_mislabels": [d for d in found if d["where"] == "across classes"],
        "tiny_images": [{"path": s.path, "size": list(s.size)} for s in samples if min(s.size) < TINY_SIDE],
        "extreme_aspect": [
            {"path": s.path, "size": list(s.size)}
            for s in samples
            if min(s.size) and max(s.size) / min(s.size) > EXTREME_ASPECT
        ],
        "colour_modes": dict(Counter(s.mode for s in samples)),
        "not_rgb": [{"path": s.path, "mode": s.mode} for s in samples if s.mode != "RGB"],
        "class_name_twins": _twins(set().union(*[set(c) for c in counts.values()]) if counts else set()),
        "hidden_folders": audit.hidden_folders,
        "blocking": blocking,
        "blocking_kinds": kinds,
        "low_detail": cost["low_detail"],
        "duplicate_search": cost,
        "thresholds": {
            **_SEARCH_THRESHOLDS,
            "max_leaked_test_share": max_leaked_test_share,
            "min_train_images": min_train_images,
            "min_classes": min_classes,
        },
        "leaked": held_out,
        "leaked_test": leaked_test,
    }
    report["warnings"] = warning_lines(report, samples)
    return report
