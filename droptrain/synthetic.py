"""A synthetic image-classification dataset in the bucket layout (``train/valid/test/<class>/*.jpg``).

Each class is a combination of shape, fill texture and colour, drawn with random placement, size,
rotation, colour jitter, a noisy background and pixel noise. Neighbouring classes differ in more
than one attribute, so a ResNet separates them within a few epochs, but nothing is constant
enough to be read off a single pixel: a broken training loop stays at chance accuracy.
The output is a pure function of the arguments (same seed, same bytes).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar")
TEXTURES = ("solid", "stripes", "dots", "checks")
COLOURS = {  # hue in [0, 1)
    "red": 0.0,
    "orange": 0.08,
    "yellow": 0.16,
    "green": 0.33,
    "cyan": 0.5,
    "blue": 0.62,
    "purple": 0.75,
    "magenta": 0.87,
}
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(COLOURS)
SPLIT_FRACTIONS = (("train", 0.7), ("valid", 0.15), ("test", 0.15))


class SyntheticDatasetError(ValueError):
    pass


@dataclass(frozen=True)
class ClassSpec:
    shape: str
    texture: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour}-{self.texture}-{self.shape}"


def class_specs(n: int) -> list[ClassSpec]:
    """``n`` distinct classes; consecutive ones differ in shape and colour (and often texture)."""
    if not 2 <= n <= MAX_CLASSES:
        raise SyntheticDatasetError(f"--classes must be from 2 to {MAX_CLASSES}, got {n}")
    colours = list(COLOURS)
    specs = []
    for i in range(n):
        # Mixed-radix walk: (shape, colour) fixes i mod 64, the texture fixes i // 64: all distinct.
        shape = i % 8
        colour = (i // 8 + i) % 8
        texture = (i // 64 + i // 2) % 4
        specs.append(ClassSpec(SHAPES[shape], TEXTURES[texture], colours[colour]))
    return specs


def split_counts(per_class: int) -> dict[str, int]:
    if per_class < 3:
        raise SyntheticDatasetError(f"--per-class must be at least 3 (one image per split), got {per_class}")
    valid = max(1, round(per_class * SPLIT_FRACTIONS[1][1]))
    test = max(1, round(per_class * SPLIT_FRACTIONS[2][1]))
    return {"train": per_class - valid - test, "valid": valid, "test": test}


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(sat, 0), 1), min(max(val, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if shape == "square":
        return rot([(-r, -r), (r, -r), (r, r), (-r, r)])
    if shape == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "diamond":
        return rot([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return rot(pts)
    if shape == "cross":
        w = r * 0.35
        return rot(
            [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        )
    if shape == "bar":
        return rot([(-r, -0.3 * r), (r, -0.3 * r), (r, 0.3 * r), (-r, 0.3 * r)])
    raise AssertionError(shape)


def _mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    r = size * rng.uniform(0.22, 0.34)
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    angle = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = r * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] modulation of the fill's brightness."""
    if texture == "solid":
        return np.ones((size, size))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = size * rng.uniform(0.08, 0.14)
    theta = rng.uniform(0, math.pi)
    if texture == "stripes":
        u = xx * math.cos(theta) + yy * math.sin(theta)
        return 0.45 + 0.55 * (np.sin(2 * math.pi * u / period) > 0)
    if texture == "dots":
        px = (xx % period) - period / 2
        py = (yy % period) - period / 2
        return 0.4 + 0.6 * (px**2 + py**2 < (period * 0.3) ** 2)
    if texture == "checks":
        return 0.45 + 0.55 * (((xx // period) + (yy // period)) % 2)
    raise AssertionError(texture)


def render(spec: ClassSpec, size: int, rng: np.random.Generator) -> Image.Image:
    hue = COLOURS[spec.colour] + rng.normal(0, 0.02)
    bg_hue = rng.uniform(0, 1)
    background = np.empty((size, size, 3))
    background[:] = _rgb(bg_hue, rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.85))
    background += rng.normal(0, 18, (size, size, 3))
    fill = np.array(_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)), dtype=np.float64)
    shaded = fill[None, None, :] * _texture(spec.texture, size, rng)[..., None]
    mask = np.asarray(_mask(spec.shape, size, rng), dtype=np.float64)[..., None] / 255.0
    image = background * (1 - mask) + shaded * mask
    image += rng.normal(0, 10, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_dataset(out: Path, classes: int = 4, per_class: int = 40, size: int = 64, seed: int = 0) -> dict:
    """Write the dataset under ``out`` and return a summary (classes and counts per split)."""
    if size < 16:
        raise SyntheticDatasetError(f"--size must be at least 16 pixels, got {size}")
    specs = class_specs(classes)
    counts = split_counts(per_class)
    for index, spec in enumerate(specs):
        # One generator per class and split: adding classes never changes the existing images.
        for split_index, (split, n) in enumerate(counts.items()):
            rng = np.random.default_rng([seed, index, split_index])
            folder = out / split / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                render(spec, size, rng).save(folder / f"{k:05d}.jpg", quality=90)
    return {"root": str(out), "classes": [s.name for s in specs], "per_split": counts, "size": size}
