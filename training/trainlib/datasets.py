"""Finding the dataset in the training channel and splitting it.

Layouts (docs/architecture.md, "Bucket layout"):

* ``<root>/{train,valid,test}/<class>/<image>`` — ``valid/`` and ``test/`` optional; a missing
  split is carved from ``train/``, stratified per class and deterministic for a seed.
* ``<root>/<class>/<image>`` — flat; split 80/10/10 the same way.
* either of those inside one archive (zip/tar/tar.gz/tgz), with one optional top-level folder.

Class = folder name; the classes are the folders of ``train/`` (or of the root, when flat), in
sorted order, so the index of a class is stable for a given dataset.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from trainlib.archives import DEFAULT_MAX_BYTES, extract_archive, is_archive
from trainlib.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("train", "valid", "test")
# Names that uploads and tools leave behind and that are never data.
_IGNORED_NAMES = frozenset({"_READY", "__MACOSX", "Thumbs.db", "desktop.ini"})


@dataclass
class Splits:
    """Image paths with class indices, per split."""

    classes: list[str]
    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    layout: str
    carved: list[str] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    ignored_files: int = 0

    def summary(self) -> str:
        carved = f" (carved from train: {', '.join(self.carved)})" if self.carved else ""
        return (
            f"dataset: {len(self.classes)} classes, layout={self.layout}, train={len(self.train)} "
            f"valid={len(self.valid)} test={len(self.test)}{carved}; "
            f"skipped {len(self.unreadable)} unreadable images, ignored {self.ignored_files} other files"
        )


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _IGNORED_NAMES


def _children(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if _visible(p)), key=lambda p: p.name)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def resolve_dataset_root(channel: Path, work_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """The folder holding the dataset: the channel itself, or an archive in it extracted."""
    if not channel.exists():
        raise DatasetError(f"training channel {channel} does not exist")
    if channel.is_file():
        candidates = [channel]
    else:
        entries = _children(channel)
        candidates = [p for p in entries if is_archive(p)]
        if candidates and len(candidates) != len(entries):
            raise DatasetError(
                f"training channel {channel} mixes an archive with other files; "
                "give either one archive or one dataset folder"
            )
    if len(candidates) > 1:
        raise DatasetError(f"training channel {channel} holds {len(candidates)} archives; give exactly one")
    if candidates:
        archive = candidates[0]
        if not is_archive(archive):
            raise DatasetError(f"{archive} is not a zip or tar archive")
        log.info("extracting %s", archive.name)
        root = extract_archive(archive, work_dir / "dataset", max_bytes=max_bytes)
    else:
        root = channel
    return _descend_single_folder(root)


def _descend_single_folder(root: Path) -> Path:
    """Step into one top-level folder that wraps the whole dataset (as archives often have)."""
    entries = _children(root)
    if (
        len(entries) == 1
        and entries[0].is_dir()
        and entries[0].name not in SPLITS
        and any(p.is_dir() for p in _children(entries[0]))
    ):
        return entries[0]
    return root


def _class_images(split_dir: Path) -> tuple[dict[str, list[Path]], int]:
    """``{class: sorted image paths}`` and the number of non-image files ignored."""
    classes: dict[str, list[Path]] = {}
    ignored = 0
    for entry in _children(split_dir):
        if not entry.is_dir():
            ignored += 1
            continue
        images = []
        for path in sorted(entry.rglob("*")):
            if not path.is_file() or not all(_visible(Path(part)) for part in path.relative_to(entry).parts):
                continue
            if is_image_name(path):
                images.append(path)
            else:
                ignored += 1
        classes[entry.name] = images
    return classes, ignored


def _readable(path: Path) -> bool:
    """A cheap header check: PIL identifies the format without decoding the pixels. An image past
    PIL's decompression-bomb limit (twice ``Image.MAX_IMAGE_PIXELS``) is skipped like a broken one:
    every trial would fail on it."""
    try:
        with Image.open(path) as img:
            return img.format in ("JPEG", "PNG", "MPO")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return False


def _carve(images: list[Path], fractions: dict[str, float], seed: int, class_name: str) -> dict[str, list[Path]]:
    """Deterministic, per-class split of ``images`` into ``train`` and the given fractions."""
    shuffled = sorted(images)
    random.Random(f"{seed}:{class_name}").shuffle(shuffled)
    out: dict[str, list[Path]] = {}
    remaining = shuffled
    for split, fraction in fractions.items():
        k = max(1, round(len(shuffled) * fraction))
        if len(remaining) - k < 1:
            k = max(0, len(remaining) - 1)
        out[split], remaining = remaining[:k], remaining[k:]
    out["train"] = remaining
    return out


def discover(root: Path, seed: int = 42, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> Splits:
    """Classes and per-split image lists for the dataset at ``root``.

    Raises ``DatasetError`` for fewer than two classes, a class without training images, an
    empty split, or a class in ``valid``/``test`` that ``train`` lacks.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    layout, per_split, ignored = _find_classes(root)
    classes = _check_classes(root, layout, per_split)
    unreadable = _drop_unreadable(per_split)
    _check_not_empty(per_split, classes)
    carved = _carve_missing(per_split, classes, {"valid": valid_fraction, "test": test_fraction}, seed)

    def flatten(split: str) -> list[tuple[Path, int]]:
        return [(path, index) for index, name in enumerate(classes) for path in per_split.get(split, {}).get(name, [])]

    return Splits(
        classes=classes,
        train=flatten("train"),
        valid=flatten("valid"),
        test=flatten("test"),
        layout=layout,
        carved=carved,
        unreadable=unreadable,
        ignored_files=ignored,
    )


def _find_classes(root: Path) -> tuple[str, dict[str, dict[str, list[Path]]], int]:
    """``(layout, {split: {class: images}}, files ignored)``: ``train/valid/test`` folders, or flat."""
    if not (root / "train").is_dir():
        nested = [p.name for p in _children(root) if p.is_dir() and (p / "train").is_dir()]
        if nested:
            raise DatasetError(
                f"the top folders {', '.join(nested[:5])} each hold their own train/ folder: that is several "
                "datasets, not one dataset's classes; upload one dataset per archive or folder"
            )
        flat, ignored = _class_images(root)
        return "flat", {"train": flat}, ignored
    per_split: dict[str, dict[str, list[Path]]] = {}
    ignored = 0
    for split in SPLITS:
        if (root / split).is_dir():
            per_split[split], n = _class_images(root / split)
            ignored += n
    others = [p.name for p in _children(root) if p.is_dir() and p.name not in SPLITS]
    if others:
        log.warning("ignoring folders beside train/valid/test: %s", ", ".join(others))
    return "splits", per_split, ignored


def _check_classes(root: Path, layout: str, per_split: dict[str, dict[str, list[Path]]]) -> list[str]:
    classes = sorted(per_split["train"])
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DatasetError(
            f"a classifier needs at least 2 classes; found {len(classes)} ({found}) in "
            f"{root / 'train' if layout == 'splits' else root}"
        )
    for split in ("valid", "test"):
        extra = sorted(set(per_split.get(split, {})) - set(classes))
        if extra:
            raise DatasetError(f"{split}/ has classes that train/ lacks: {', '.join(extra)}")
    return classes


def _drop_unreadable(per_split: dict[str, dict[str, list[Path]]]) -> list[Path]:
    """Images whose header does not parse, taken out of every split and returned."""
    unreadable: list[Path] = []
    for split_classes in per_split.values():
        for name, paths in split_classes.items():
            good = [p for p in paths if _readable(p)]
            unreadable.extend(sorted(set(paths) - set(good)))
            split_classes[name] = good
    for path in unreadable:
        log.warning("skipping unreadable image %s", path)
    return unreadable


def _check_not_empty(per_split: dict[str, dict[str, list[Path]]], classes: list[str]) -> None:
    for split, split_classes in per_split.items():
        if sum(len(v) for v in split_classes.values()) == 0:
            raise DatasetError(f"the {split} split has no readable images")
    empty = [c for c in classes if not per_split["train"][c]]
    if empty:
        raise DatasetError(f"these classes have no readable training images: {', '.join(empty)}")


def _carve_missing(
    per_split: dict[str, dict[str, list[Path]]], classes: list[str], fractions: dict[str, float], seed: int
) -> list[str]:
    """The splits the dataset lacks, carved from ``train/`` per class; returns their names."""
    to_carve = {split: fraction for split, fraction in fractions.items() if split not in per_split}
    if not to_carve:
        return []
    for split in to_carve:
        per_split[split] = {}
    for name in classes:
        for split, paths in _carve(per_split["train"][name], to_carve, seed, name).items():
            per_split[split][name] = paths
    if not any(per_split["valid"].values()):
        raise DatasetError("too few images to carve a validation split from train/")
    return list(to_carve)


def drop_held_out(splits: Splits, root: Path, relative_paths: set[str]) -> int:
    """Take these images (paths relative to ``root``, as the audit names them) out of valid and test —
    never out of train; returns how many went. What AUDIT_FIX does with the audit's cross-split duplicates."""
    before = len(splits.valid) + len(splits.test)

    def keep(samples):
        return [(p, i) for p, i in samples if p.relative_to(root).as_posix() not in relative_paths]

    splits.valid, splits.test = keep(splits.valid), keep(splits.test)
    return before - len(splits.valid) - len(splits.test)


def add_reviewed(splits: Splits, root: Path) -> int:
    """The review queue's labelled images (``<root>/{train,test}/<class>/<image>``, the ``reviewed``
    channel) added to the splits; returns how many. A class the dataset lacks joins its classes in
    sorted order, and every index is remapped by name. Unreadable ones are skipped as the dataset's are."""
    found = {split: _class_images(root / split)[0] for split in ("train", "test") if (root / split).is_dir()}
    splits.unreadable += _drop_unreadable(found)
    trainable = {name for name, paths in found.get("train", {}).items() if paths}
    classes = sorted(set(splits.classes) | trainable)  # a new class needs a training image
    remap = [classes.index(name) for name in splits.classes]
    splits.train = [(p, remap[i]) for p, i in splits.train]
    splits.valid = [(p, remap[i]) for p, i in splits.valid]
    splits.test = [(p, remap[i]) for p, i in splits.test]
    added = 0
    for split, per_class in found.items():
        for name, paths in per_class.items():
            if name in classes:
                getattr(splits, split).extend((path, classes.index(name)) for path in paths)
                added += len(paths)
    splits.classes = classes
    return added
