import shutil
import tarfile
from collections import Counter

import pytest
from PIL import Image

from trainlib.datasets import discover, resolve_dataset_root
from trainlib.errors import DatasetError


def _image(path, colour=(200, 10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)


def _flat(root, classes=("cat", "dog", "fox"), per_class=20):
    for c in classes:
        for i in range(per_class):
            _image(root / c / f"{i:03d}.jpg")
    return root


def test_split_layout_as_given(tiny_dataset):
    splits = discover(tiny_dataset)
    assert splits.layout == "splits" and splits.carved == []
    assert len(splits.classes) == 4
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (4 * 22, 4 * 4, 4 * 4)
    assert splits.classes == sorted(splits.classes), "class index order is the sorted folder names"


def test_flat_layout_is_carved_80_10_10_stratified_and_deterministic(tmp_path):
    root = _flat(tmp_path / "flat")
    first = discover(root, seed=7)
    assert first.layout == "flat" and first.carved == ["valid", "test"]
    for split, expected in (("train", 16), ("valid", 2), ("test", 2)):
        per_class = Counter(label for _, label in getattr(first, split))
        assert per_class == {0: expected, 1: expected, 2: expected}, split
    again = discover(root, seed=7)
    assert again.valid == first.valid and again.test == first.test
    other = discover(root, seed=8)
    assert other.valid != first.valid, "the seed picks which images are carved"
    everything = first.train + first.valid + first.test
    assert len(set(everything)) == len(everything) == 60, "no image lands in two splits"


def test_missing_valid_is_carved_and_given_test_kept(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "train", per_class=10)
    _flat(root / "test", per_class=3)
    splits = discover(root)
    assert splits.carved == ["valid"]
    assert len(splits.test) == 9
    assert Counter(label for _, label in splits.valid) == {0: 1, 1: 1, 2: 1}


def test_accepts_extensions_case_insensitively_and_ignores_clutter(tmp_path):
    root = tmp_path / "ds"
    _image(root / "a" / "1.JPG")
    _image(root / "a" / "2.jpeg")
    _image(root / "a" / "3.PNG", fmt="PNG")
    for i in range(3):
        _image(root / "b" / f"{i}.png", fmt="PNG")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "_READY").write_bytes(b"")
    splits = discover(root)
    assert splits.classes == ["a", "b"]
    assert len(splits.train) + len(splits.valid) + len(splits.test) == 6
    assert splits.ignored_files == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = _flat(tmp_path / "ds", per_class=10)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    (root / "dog" / "empty.png").write_bytes(b"")
    splits = discover(root)
    assert sorted(p.name for p in splits.unreadable) == ["broken.jpg", "empty.png"]
    assert all(p.name not in ("broken.jpg", "empty.png") for p, _ in splits.train + splits.valid + splits.test)


def test_one_class_fails_with_a_clear_message(tmp_path):
    root = _flat(tmp_path / "ds", classes=("cat",))
    with pytest.raises(DatasetError, match="at least 2 classes; found 1 \\(cat\\)"):
        discover(root)


def test_empty_split_fails(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "train")
    (root / "valid" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="valid split has no readable images"):
        discover(root)


def test_class_without_training_images_fails(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "train")
    (root / "train" / "emu").mkdir()
    with pytest.raises(DatasetError, match="no readable training images: emu"):
        discover(root)


def test_class_only_in_valid_fails(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "train", classes=("cat", "dog"))
    _flat(root / "valid", classes=("cat", "emu"), per_class=2)
    with pytest.raises(DatasetError, match="valid/ has classes that train/ lacks: emu"):
        discover(root)


def test_archive_with_one_top_level_folder(tmp_path, tiny_dataset):
    channel = tmp_path / "channel"
    channel.mkdir()
    with tarfile.open(channel / "pets.tgz", "w:gz") as tar:
        tar.add(tiny_dataset, arcname="pets")
    root = resolve_dataset_root(channel, tmp_path / "work")
    assert root.name == "pets" and (root / "train").is_dir()
    assert discover(root).classes == discover(tiny_dataset).classes


def test_channel_holding_the_folder_directly(tmp_path, tiny_dataset):
    channel = tmp_path / "channel"
    shutil.copytree(tiny_dataset, channel)
    (channel / "_READY").write_bytes(b"")
    assert resolve_dataset_root(channel, tmp_path / "work") == channel


def test_channel_with_two_archives_is_refused(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "a.zip").write_bytes(b"")
    (channel / "b.zip").write_bytes(b"")
    with pytest.raises(DatasetError, match="2 archives"):
        resolve_dataset_root(channel, tmp_path / "work")
