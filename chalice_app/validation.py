"""Checking a dataset in the bucket before any money is spent on it.

The rules mirror ``training/trainlib/datasets.py`` (layouts, classes, splits, image extensions),
applied to object keys rather than files: a listing for a folder, the central directory for a zip
(read with a handful of ranged GETs, never the whole archive). Tar archives cannot be listed
without reading them; they are checked for size and format, and the training job checks the rest.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable

from chalice_app.ports import ObjectStore
from chalice_app.names import READY_MARKER, DatasetRef

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "valid", "test")
MAX_ARCHIVE_BYTES = 50 * 1024**3
MAX_MEMBERS = 2_000_000
_IGNORED = {READY_MARKER, "__MACOSX", "Thumbs.db", "desktop.ini"}


@dataclass
class DatasetReport:
    layout: str = ""
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    ignored: int = 0
    reasons: list[str] = field(default_factory=list)
    checked: str = "listing"

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def detail(self) -> dict:
        return {
            "layout": self.layout, "classes": self.classes, "num_classes": len(self.classes),
            "images": self.images, "images_per_split": {s: sum(c.values()) for s, c in self.counts.items()},
            "ignored_files": self.ignored, "checked": self.checked, "reasons": self.reasons,
        }


def _visible(parts: tuple[str, ...]) -> bool:
    return all(not p.startswith(".") and p not in _IGNORED for p in parts)


def _strip_single_folder(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop one top-level folder that wraps everything (as zipped folders have), like training does."""
    tops = {p[0] for p in paths if len(p) > 1}
    if len(tops) == 1 and all(len(p) > 1 for p in paths):
        top = next(iter(tops))
        if top not in SPLITS and any(len(p) > 2 for p in paths):
            return [p[1:] for p in paths]
    return paths


def check_keys(relative: Iterable[tuple[str, int]]) -> DatasetReport:
    """Validate a dataset from its relative paths and sizes (``train/cat/1.jpg``, ``cat/1.jpg``…)."""
    report = DatasetReport()
    entries = [(tuple(PurePosixPath(k).parts), size) for k, size in relative if k and not k.endswith("/")]
    entries = [(p, size) for p, size in entries if _visible(p)]
    paths = _strip_single_folder([p for p, _ in entries])
    items = list(zip(paths, (size for _, size in entries)))
    report.layout = "splits" if any(p[0] == "train" and len(p) > 2 for p in paths) else "flat"
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    class_dirs: dict[str, set[str]] = defaultdict(set)
    for path, size in items:
        if report.layout == "splits":
            if path[0] not in SPLITS or len(path) < 3:
                report.ignored += 1
                continue
            split, cls = path[0], path[1]
        else:
            if len(path) < 2:
                report.ignored += 1
                continue
            split, cls = "train", path[0]
        class_dirs[split].add(cls)
        if path[-1].lower().endswith(IMAGE_SUFFIXES) and size > 0:
            counts[split][cls] += 1
        else:
            report.ignored += 1
    report.counts = {s: dict(sorted(c.items())) for s, c in counts.items()}
    report.classes = sorted(class_dirs.get("train", set()))

    if len(report.classes) < 2:
        report.reasons.append(f"a classifier needs at least 2 classes; found {len(report.classes)}"
                              + (f" ({', '.join(report.classes)})" if report.classes else ""))
    empty = [c for c in report.classes if not counts["train"].get(c)]
    if empty:
        report.reasons.append(f"these classes have no JPEG or PNG training images: {', '.join(empty)}")
    for split in ("valid", "test"):
        if split in class_dirs:
            if not sum(counts[split].values()):
                report.reasons.append(f"the {split} split has no JPEG or PNG images")
            extra = sorted(class_dirs[split] - set(report.classes))
            if extra:
                report.reasons.append(f"{split}/ has classes that train/ lacks: {', '.join(extra)}")
    if "valid" not in class_dirs and report.classes and all(counts["train"].get(c, 0) < 2 for c in report.classes):
        report.reasons.append("too few images to carve a validation split: give each class at least 2 images, or a valid/ folder")
    return report


def check_folder(s3: ObjectStore, dataset: DatasetRef) -> DatasetReport:
    keys = ((key[len(dataset.prefix):], size) for key, size in s3.list_objects(dataset.bucket, dataset.prefix))
    return check_keys(keys)


def check_archive(s3: ObjectStore, dataset: DatasetRef, size: int) -> DatasetReport:
    report = DatasetReport(checked="archive")
    if size == 0:
        report.reasons.append(f"{dataset.key} is empty")
        return report
    if size > MAX_ARCHIVE_BYTES:
        report.reasons.append(f"{dataset.key} is {size} bytes, over the limit of {MAX_ARCHIVE_BYTES}")
        return report
    if dataset.key.lower().endswith(".zip"):
        return _check_zip(s3, dataset, size)
    head = s3.read_range(dataset.bucket, dataset.key, 0, min(size, 512) - 1)
    compressed = dataset.key.lower().endswith((".tar.gz", ".tgz"))
    if compressed and not head.startswith(b"\x1f\x8b"):
        report.reasons.append(f"{dataset.key} is not gzip-compressed")
    elif not compressed and head[257:262] != b"ustar":
        report.reasons.append(f"{dataset.key} is not a tar archive")
    report.checked = "archive format only (tar contents are checked by the training job)"
    return report


def _check_zip(s3: ObjectStore, dataset: DatasetRef, size: int) -> DatasetReport:
    reader = s3.open_ranged(dataset.bucket, dataset.key, size)
    try:
        with zipfile.ZipFile(reader) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        report = DatasetReport(checked="zip central directory")
        report.reasons.append(f"{dataset.key} is not a readable zip archive ({exc})")
        return report
    unsafe = [i.filename for i in infos
              if i.filename.startswith("/") or ".." in PurePosixPath(i.filename.replace("\\", "/")).parts
              or (i.external_attr >> 16) & 0o170000 == 0o120000]
    report = check_keys((i.filename, i.file_size) for i in infos if not i.is_dir())
    report.checked = "zip central directory"
    if unsafe:
        report.reasons.insert(0, f"the archive has unsafe members (absolute, '..' or links): {', '.join(unsafe[:5])}")
    if len(infos) > MAX_MEMBERS:
        report.reasons.append(f"the archive has more than {MAX_MEMBERS} members")
    total = sum(i.file_size for i in infos)
    if total > MAX_ARCHIVE_BYTES:
        report.reasons.append(f"the archive expands to {total} bytes, over the limit of {MAX_ARCHIVE_BYTES}")
    return report
