"""Warm start's weights and the reviewed images' place in the splits (train.py's side of retrain)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from droptrain.synthetic import make_dataset
from trainlib import models
from trainlib.datasets import add_reviewed, discover
from trainlib.warmstart import WarmStartError, warm_start


def _serving(folder, classes, arch="resnet18"):
    torch.manual_seed(1)
    model = models.build_model(arch, len(classes), "none")
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "model.json").write_text(json.dumps({"arch": arch, "classes": classes, "run_id": "pets-00000001"}))
    return model


def test_every_weight_is_the_serving_models_and_the_head_rows_follow_the_class_names(tmp_path):
    old = _serving(tmp_path / "serving", ["cat", "dog"])
    torch.manual_seed(2)
    new = models.build_model("resnet18", 3, "none")
    fresh = new.fc.weight.detach().clone()
    line = warm_start(new, "resnet18", ["bird", "cat", "dog"], tmp_path / "serving")
    assert line == "warm start from pets-00000001: 2 known classes, new: bird"
    assert torch.equal(new.conv1.weight, old.conv1.weight) and torch.equal(
        new.layer4[1].bn2.bias, old.layer4[1].bn2.bias
    )
    assert torch.equal(new.fc.weight[1], old.fc.weight[0]) and torch.equal(new.fc.weight[2], old.fc.weight[1])
    assert torch.equal(new.fc.bias[1:], old.fc.bias)
    assert torch.equal(new.fc.weight[0], fresh[0]), "the new class starts from the new head's initialisation"


def test_a_serving_model_that_cannot_be_read_is_a_clear_error(tmp_path):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "model.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(WarmStartError, match="cannot be read for a warm start"):
        warm_start(models.build_model("resnet18", 2, "none"), "resnet18", ["a", "b"], tmp_path / "serving")


def test_reviewed_images_join_their_splits_and_a_new_class_needs_a_training_image(tmp_path):
    make_dataset(tmp_path / "data", classes=2, per_class=10, size=16)
    splits = discover(tmp_path / "data")
    before = {
        split: [(p, splits.classes[i]) for p, i in getattr(splits, split)] for split in ("train", "valid", "test")
    }
    image = next((tmp_path / "data" / "test").rglob("*.jpg"))
    for where in ("train/aardvark", "test/aardvark", "test/zzz-only-held-out", f"train/{splits.classes[1]}"):
        (tmp_path / "reviewed" / where).mkdir(parents=True)
        shutil.copy(image, tmp_path / "reviewed" / where / "r1.jpg")
    (tmp_path / "reviewed" / "train" / "aardvark" / "broken.jpg").write_bytes(b"no image")
    assert add_reviewed(splits, tmp_path / "reviewed") == 3
    assert splits.classes[0] == "aardvark" and "zzz-only-held-out" not in splits.classes
    for split in ("train", "valid", "test"):
        named = [(p, splits.classes[i]) for p, i in getattr(splits, split)]
        assert named[: len(before[split])] == before[split], "the dataset's images keep their class names"
    assert [splits.classes[i] for p, i in splits.train if tmp_path / "reviewed" in p.parents] == [
        "aardvark",
        splits.classes[2],
    ]
    assert [splits.classes[i] for p, i in splits.test if tmp_path / "reviewed" in p.parents] == ["aardvark"]
    assert any(p.name == "broken.jpg" for p in splits.unreadable)
