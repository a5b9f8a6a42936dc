"""Checking a dataset in the bucket before any money is spent on it.

The rules mirror ``training/trainlib/datasets.py`` (layouts, classes, splits, image extensions),
applied to object keys rather than files: a listing for a folder, the central directory for a zip
(read with a handful of ranged GETs, never the whole archive), the member headers of a tar (read
in one pass, for archives up to ``TAR_SCAN_BYTES``; the training job checks larger ones).

Archives are untrusted: members with absolute paths, ``..``, links or devices are refused, and so is
an archive that would expand beyond what the training volume holds or more than ``MAX_RATIO`` times
its own size (photos barely compress: that is an archive bomb). The training job applies the same
limits again while it extracts, counting what it writes (``trainlib.archives``).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from chalice_app.names import READY_MARKER, DatasetRef
from chalice_app.ports import ObjectStore

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "valid", "test")
MAX_ARCHIVE_BYTES = 50 * 1024**3
MAX_MEMBERS = 2_000_000
MAX_RATIO = 100  # expanded size over archive size
TAR_SCAN_BYTES = 4 * 1024**3  # read whole in the Lambda (~40 s at S3's per-stream speed)
# What the training volume must keep beside the extracted dataset: the archive itself, checkpoints,
# the model and its packing.
VOLUME_HEADROOM = 0.8
_IGNORED = {READY_MARKER, "__MACOSX", "Thumbs.db", "desktop.ini"}


@dataclass
class DatasetReport:
    layout: str = ""
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    ignored: int = 0
    reasons: list[str] = field(default_factory=list)
    checked: str = "listing"
    bytes: int = 0  # under the folder's prefix (what a File-mode job copies), or the archive expanded

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def detail(self) -> dict:
        return {
            "layout": self.layout,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "images": self.images,
            "images_per_split": {s: sum(c.values()) for s, c in self.counts.items()},
            "ignored_files": self.ignored,
            "checked": self.checked,
            "bytes": self.bytes,
            "reasons": self.reasons,
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
    report.bytes = sum(size for _, size in entries)
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
    nested = sorted({p[0] for p in paths if report.layout == "flat" and len(p) > 3 and p[1] in SPLITS})
    if nested:
        report.reasons.append(
            f"the top folders {', '.join(nested[:5])} each hold their own {'/'.join(SPLITS)} folders: that is several"
            " datasets, not one dataset's classes; upload one dataset per archive or folder"
        )
        return report

    if len(report.classes) < 2:
        report.reasons.append(
            f"a classifier needs at least 2 classes; found {len(report.classes)}"
            + (f" ({', '.join(report.classes)})" if report.classes else "")
        )
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
        report.reasons.append(
            "too few images to carve a validation split: give each class at least 2 images, or a valid/ folder"
        )
    return report


def check_folder(s3: ObjectStore, dataset: DatasetRef) -> DatasetReport:
    keys = ((key[len(dataset.prefix) :], size) for key, size in s3.list_objects(dataset.bucket, dataset.prefix))
    return check_keys(keys)


def expansion_limit(volume_size_gb: int, archive_size: int) -> int:
    """The most an archive may expand to on a training volume of this size (it is there too)."""
    return min(MAX_ARCHIVE_BYTES, int(volume_size_gb * 1024**3 * VOLUME_HEADROOM) - archive_size)


def check_archive(s3: ObjectStore, dataset: DatasetRef, size: int, volume_size_gb: int = 50) -> DatasetReport:
    report = DatasetReport(checked="archive")
    if size == 0:
        report.reasons.append(f"{dataset.key} is empty")
        return report
    limit = expansion_limit(volume_size_gb, size)
    if size > MAX_ARCHIVE_BYTES or limit <= 0:
        report.reasons.append(
            f"{dataset.key} is {size} bytes: too large for the {volume_size_gb} GB training volume "
            f"(TRAINING_VOLUME_GB) or over the limit of {MAX_ARCHIVE_BYTES} bytes"
        )
        return report
    if dataset.key.lower().endswith(".zip"):
        return _check_zip(s3, dataset, size, limit)
    return _check_tar(s3, dataset, size, limit)


def _check_members(
    report: DatasetReport, members: list[tuple[str, int]], unsafe: list[str], size: int, limit: int
) -> None:
    if unsafe:
        report.reasons.insert(
            0, f"the archive has unsafe members (absolute, '..', links or devices): {', '.join(unsafe[:5])}"
        )
    if len(members) > MAX_MEMBERS:
        report.reasons.append(f"the archive has more than {MAX_MEMBERS} members")
    total = sum(member_size for _, member_size in members)
    if total > limit:
        report.reasons.append(
            f"the archive expands to {total} bytes, more than the training volume can hold ({limit} bytes)"
        )
    if total > MAX_RATIO * size:
        report.reasons.append(
            f"the archive expands {total // size} times its size (limit {MAX_RATIO}): "
            "images barely compress, so this looks like an archive bomb"
        )


def _not_utf8(names: Iterable[str]) -> str | None:
    """The reason to refuse an archive whose member names are not all UTF-8 (S3 keys, notifications and
    the training job's paths are); ``None`` when they are."""
    bad = []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    return f"the archive has member names that are not UTF-8: {', '.join(bad[:5])}; rename them" if bad else None


def _member_key(name: str) -> str:
    """A member's path as a key: Windows tools write zips with backslashes between the names."""
    return name.replace("\\", "/")


def _unsafe_name(name: str) -> bool:
    normalised = name.replace("\\", "/")
    return (
        normalised.startswith("/")
        or ".." in PurePosixPath(normalised).parts
        or (len(normalised) > 1 and normalised[1] == ":")
    )


def _check_zip(s3: ObjectStore, dataset: DatasetRef, size: int, limit: int) -> DatasetReport:
    reader = s3.open_ranged(dataset.bucket, dataset.key, size)
    try:
        with zipfile.ZipFile(reader) as zf:
            infos = zf.infolist()
    except UnicodeDecodeError as exc:  # names flagged UTF-8 that are not
        reason = f"the archive has member names that are not UTF-8 ({exc.reason}); rename them"
        return DatasetReport(checked="zip central directory", reasons=[reason])
    except (zipfile.BadZipFile, ValueError) as exc:
        report = DatasetReport(checked="zip central directory")
        report.reasons.append(f"{dataset.key} is not a readable zip archive ({exc})")
        return report
    unsafe = [i.filename for i in infos if _unsafe_name(i.filename) or (i.external_attr >> 16) & 0o170000 == 0o120000]
    report = check_keys((_member_key(i.filename), i.file_size) for i in infos if not i.is_dir())
    report.checked = "zip central directory"
    _check_members(report, [(i.filename, i.file_size) for i in infos], unsafe, size, limit)
    return report


def _check_tar(s3: ObjectStore, dataset: DatasetRef, size: int, limit: int) -> DatasetReport:
    compressed = dataset.key.lower().endswith((".tar.gz", ".tgz"))
    head = s3.read_range(dataset.bucket, dataset.key, 0, min(size, 512) - 1)
    if compressed and not head.startswith(b"\x1f\x8b"):
        return DatasetReport(checked="archive format", reasons=[f"{dataset.key} is not gzip-compressed"])
    if not compressed and head[257:262] != b"ustar":
        return DatasetReport(checked="archive format", reasons=[f"{dataset.key} is not a tar archive"])
    if size > TAR_SCAN_BYTES:
        return DatasetReport(
            checked=f"archive format only (over {TAR_SCAN_BYTES // 1024**3} GiB: the training job checks the members)"
        )
    members, unsafe, total = [], [], 0
    stream = io.BufferedReader(s3.open_ranged(dataset.bucket, dataset.key, size), buffer_size=8 * 1024 * 1024)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:  # stream mode: each member's data is skipped by reading past it
                if _unsafe_name(info.name) or not (info.isfile() or info.isdir()):
                    unsafe.append(info.name)
                elif info.isfile():
                    members.append((info.name, info.size))
                    total += info.size
                # Reading past a member decompresses it: a bomb is stopped as soon as it is one.
                if len(members) > MAX_MEMBERS or total > min(limit, MAX_RATIO * size):
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return DatasetReport(
            checked="tar member headers", reasons=[f"{dataset.key} is not a readable tar archive ({exc})"]
        )
    not_utf8 = _not_utf8([name for name, _ in members] + unsafe)
    if not_utf8:
        return DatasetReport(checked="tar member headers", reasons=[not_utf8])
    report = check_keys([(_member_key(name), member_size) for name, member_size in members])
    report.checked = "tar member headers"
    _check_members(report, members, unsafe, size, limit)
    return report
