import hashlib
import json

import pytest

from droptrain import cli
from droptrain.synthetic import MAX_CLASSES, SyntheticDatasetError, class_specs, make_dataset


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    make_dataset(tmp_path / "a", classes=3, per_class=6, size=32, seed=5)
    make_dataset(tmp_path / "b", classes=3, per_class=6, size=32, seed=5)
    make_dataset(tmp_path / "c", classes=3, per_class=6, size=32, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_and_counts(tmp_path):
    summary = make_dataset(tmp_path / "d", classes=5, per_class=20, size=32, seed=0)
    assert summary["per_split"] == {"train": 14, "valid": 3, "test": 3}
    for split, n in summary["per_split"].items():
        for name in summary["classes"]:
            assert len(list((tmp_path / "d" / split / name).glob("*.jpg"))) == n


def test_class_names_are_distinct_up_to_the_maximum():
    names = [spec.name for spec in class_specs(MAX_CLASSES)]
    assert len(set(names)) == MAX_CLASSES
    first = class_specs(8)
    assert all(a.shape != b.shape and a.colour != b.colour for a, b in zip(first, first[1:]))


@pytest.mark.parametrize(
    "kwargs,message", [({"classes": 1}, "--classes"), ({"per_class": 2}, "--per-class"), ({"size": 8}, "--size")]
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(SyntheticDatasetError, match=message):
        make_dataset(tmp_path / "x", **kwargs)


def test_cli_make_dataset(tmp_path, capsys):
    assert cli.main(["make-dataset", str(tmp_path / "ds"), "--classes", "3", "--per-class", "5", "--size", "24"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["classes"]) == 3
    assert cli.main(["make-dataset", str(tmp_path / "bad"), "--classes", "1"]) == 2
    assert "--classes" in capsys.readouterr().err
