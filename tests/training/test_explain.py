"""Grad-CAM where the evidence's place is known: a square whose colour is the class, anywhere on a noisy
background. A model that learned the colours must point at the square; its explanation's peak (in the
client's image's pixels) lands near it in most test images, far more often than a peak drawn at random."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pytest
import train
from PIL import Image

from trainlib.predictor import Classifier, decode

COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 210)}
SIZE, SIDE = 96, 20  # the images' side, and the square's
NEAR = SIDE  # a peak within one square's side of its centre is "near"


def _localisation_dataset(root: Path, per_class: int, seed: int = 0) -> dict[Path, tuple[float, float]]:
    """``train/valid/test/<colour>/*.png``; returns each test image's square centre (x, y)."""
    rng = np.random.default_rng(seed)
    centres = {}
    for split, count in (("train", per_class), ("valid", per_class // 3), ("test", per_class // 3)):
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.normal(128, 30, (SIZE, SIZE, 3))
                margin = SIZE // 12  # inside the centre crop the network sees
                x, y = (int(rng.integers(margin, SIZE - margin - SIDE)) for _ in range(2))
                pixels[y : y + SIDE, x : x + SIDE] = np.array(rgb) + rng.normal(0, 15, (SIDE, SIDE, 3))
                path = folder / f"{i}.png"
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
                if split == "test":
                    centres[path] = (x + SIDE / 2, y + SIDE / 2)
    return centres


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    root = tmp_path_factory.mktemp("localisation")
    centres = _localisation_dataset(root / "data", per_class=30)
    argv = ["--data-dir", str(root / "data"), "--model-dir", str(root / "model")]
    argv += ["--output-data-dir", str(root / "out"), "--no-checkpoints", "--weights", "none", "--profile", "off"]
    argv += ["--arch", "resnet18", "--image-size", str(SIZE), "--epochs", "5", "--batch-size", "16"]
    argv += ["--lr", "0.002", "--augment", "off", "--train-mode", "full"]
    assert train.run(argv) == 0
    return Classifier.load(root / "model", device="cpu"), centres


def test_the_explanations_peak_lands_on_the_object(located):
    classifier, centres = located
    distances = []
    for path, (x, y) in centres.items():
        answer = classifier.explain(decode(path.read_bytes()))
        assert answer["predictions"][0]["label"] == path.parent.name, "the model learned the colours"
        explanation = answer["explanation"]
        assert (explanation["method"], explanation["layer"], explanation["size"]) == (
            "grad-cam",
            "layer2",  # at 96 px the last two stages' maps are 3 x 3 and 6 x 6: layer2's 12 x 12 explains
            [SIZE, SIZE],
        )
        px, py = explanation["peak"]
        distances.append(math.hypot(px - x, py - y))
    near = sum(d <= NEAR for d in distances) / len(distances)
    # A peak anywhere in the crop the network saw, at random: how often is that near a square?
    rng = np.random.default_rng(1)
    crop = SIZE * SIZE / round(SIZE * 256 / 224)
    low = (SIZE - crop) / 2
    chance = np.mean(
        [
            math.hypot(rng.uniform(low, low + crop) - x, rng.uniform(low, low + crop) - y) <= NEAR
            for x, y in list(centres.values()) * 50
        ]
    )
    assert chance < 0.3 and near >= 0.8 and near >= 2.5 * chance, (near, chance, sorted(distances))


def test_the_heatmap_is_a_grey_png_of_the_clients_image_peaking_at_the_peak(located):
    classifier, centres = located
    path = next(iter(centres))
    # The client's image at twice the size, upside down in pixels and set upright by its EXIF orientation.
    image = Image.open(path).resize((SIZE * 2, SIZE * 2)).transpose(Image.Transpose.ROTATE_180)
    exif = Image.Exif()
    exif[0x0112] = 3
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    explanation = classifier.explain(decode(buffer.getvalue()))["explanation"]
    heatmap = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"])))
    assert heatmap.mode == "L" and heatmap.size == (SIZE * 2, SIZE * 2) and explanation["size"] == [SIZE * 2] * 2
    x, y = explanation["peak"]
    pixels = np.asarray(heatmap)
    assert pixels.max() >= 250 and pixels[y, x] >= pixels.max() / 2, "the peak lies in the brightest region"
    centre = centres[path]
    assert math.hypot(x - 2 * centre[0], y - 2 * centre[1]) <= 2 * NEAR, "upright, in the client's pixels"


def test_the_centre_is_weighed_within_the_strongest_cells_neighbourhood_only():
    from trainlib.explain import centre

    cam = np.zeros((7, 7))
    cam[2, 2], cam[2, 3] = 1.0, 1.0  # one blob across two cells: its centre is between them
    cam[6, 6] = 0.9  # a second blob far away pulls nothing
    assert centre(cam) == pytest.approx((2.5, 3.0))
    cam[1, 2] = 0.4  # under half the strongest: not counted
    assert centre(cam) == pytest.approx((2.5, 3.0))
    corner = np.zeros((7, 7))
    corner[0, 0] = 1.0
    assert centre(corner) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    "size, layer", [(224, "layer4"), (128, "layer3"), (64, "layer2"), (32, "layer2"), (448, "layer4")]
)
def test_the_explaining_layer_has_a_map_of_seven_cells_a_side_where_the_input_allows(size, layer):
    from trainlib import models
    from trainlib.explain import target_layer

    assert target_layer("resnet18", models.build_model("resnet18", 2), size)[0] == layer
