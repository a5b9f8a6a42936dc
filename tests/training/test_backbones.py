"""Every backbone ``--arch`` offers trains (head mode through the feature cache, and full), writes an
artifact whose preprocessing is its weights' own, and serves it: predictions and a Grad-CAM explanation
from the layer its family explains from. From scratch (``--weights none``): no weights can be downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import train

from droptrain.synthetic import make_dataset
from trainlib import models
from trainlib.predictor import Classifier, decode

# The layer each new family explains from at the size trained here (64 px: the stage of stride 8, whose
# map is 8 x 8; at 224 px it is the last stage's 7 x 7), by the name the API answers.
LAYERS = {
    "convnext_tiny": "features.3",
    "efficientnet_v2_s": "features.3",
    "regnet_y_1_6gf": "trunk_output.block2",
    "vit_b_16": "encoder.layers.encoder_layer_11",
}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backbones") / "data"
    make_dataset(root, classes=2, per_class=8, size=32, seed=5)
    return root


@pytest.mark.parametrize("arch", list(LAYERS))
def test_each_backbone_trains_in_head_mode_and_serves_with_its_own_preprocessing(arch, small_dataset, tmp_path):
    size = models.FIXED_SIZE.get(arch, 64)
    argv = ["--data-dir", str(small_dataset), "--model-dir", str(tmp_path / "model")]
    argv += ["--output-data-dir", str(tmp_path / "out"), "--no-checkpoints", "--profile", "off", "--workers", "0"]
    argv += ["--weights", "none", "--arch", arch, "--image-size", str(size), "--train-mode", "head"]
    argv += ["--epochs", "1", "--batch-size", "8", "--feature-cache", str(tmp_path / "cache")]
    assert train.run(argv) == 0
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    crop, resize = (
        models.ARCHS[arch].weights.transforms().crop_size[0],
        models.ARCHS[arch].weights.transforms().resize_size[0],
    )
    assert (meta["arch"], meta["image_size"], meta["resize_size"]) == (arch, size, round(size * resize / crop))
    classifier = Classifier.load(tmp_path / "model", device="cpu")
    image = next((small_dataset / "test").rglob("*.jpg"))
    (answer,) = classifier.predict([decode(image.read_bytes())])
    assert {p["label"] for p in answer["predictions"]} == set(meta["classes"])
    explained = classifier.explain(decode(image.read_bytes()))
    assert explained["explanation"]["layer"] == LAYERS[arch]
    assert explained["explanation"]["size"] == [32, 32]
    assert [p["label"] for p in explained["predictions"]] == [p["label"] for p in answer["predictions"]]


@pytest.mark.parametrize("arch", ["resnet50", "convnext_tiny", "efficientnet_v2_s", "regnet_y_1_6gf", "vit_b_16"])
def test_the_image_size_defaults_to_the_weights_own(arch, small_dataset):
    args = train.parse_args(["--data-dir", str(small_dataset), "--arch", arch])
    preset = models.ARCHS[arch].weights.transforms()
    assert args.image_size == preset.crop_size[0]
    assert models.ARCHS[arch].preprocessing(args.image_size) == (preset.crop_size[0], preset.resize_size[0])


def test_vit_takes_224_pixel_images_only(small_dataset, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--data-dir", str(small_dataset), "--arch", "vit_b_16", "--image-size", "128"])
    assert "224-pixel images only" in capsys.readouterr().err


@pytest.mark.parametrize("arch", list(models.ARCHS))
def test_backbone_and_head_compose_to_the_model_and_only_the_head_trains(arch):
    model = models.build_model(arch, 3).eval()
    size = models.FIXED_SIZE.get(arch, 64)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        whole = model(images)
        parts = models.head_of(model, arch)(models.backbone_of(model, arch)(images))
    assert whole.shape == (2, 3) and torch.allclose(whole, parts, atol=1e-5)
    models.freeze_backbone(model, arch)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {f"{models.ARCHS[arch].head}.{name}" for name, _ in models.head_of(model, arch).named_parameters()}
    assert trained == head and trained


@pytest.mark.parametrize("mode", ["head", "full"])
def test_a_convnext_trains_its_backbone_in_full_mode_only(mode, small_dataset, tmp_path):
    argv = ["--data-dir", str(small_dataset), "--model-dir", str(tmp_path / "model")]
    argv += ["--output-data-dir", str(tmp_path / "out"), "--no-checkpoints", "--profile", "off", "--workers", "0"]
    argv += ["--weights", "none", "--arch", "convnext_tiny", "--image-size", "32", "--train-mode", mode]
    argv += ["--epochs", "1", "--batch-size", "8", "--seed", "7", "--augment", "on"]
    torch.manual_seed(7)  # as train.py seeds itself before it builds the model: the same starting weights
    before = models.build_model("convnext_tiny", 2).state_dict()
    assert train.run(argv) == 0
    after = torch.load(tmp_path / "model" / "model.pth", weights_only=True)
    stem_moved = not torch.equal(after["features.0.0.weight"], before["features.0.0.weight"])
    assert stem_moved == (mode == "full")
    assert not torch.equal(after["classifier.2.weight"], before["classifier.2.weight"]), "the head trained"
