"""A labelled duplicate benchmark from real images that packages ship: scikit-image's sample photographs
(and crops of them), the scanned digits scikit-learn ships, the small grey faces of scikit-image's LFW
subset, and rendered text. True duplicates are made the ways copies arise (resized 50-200%, JPEG
re-encoded at quality 30-95, cropped up to 10%, brightness +-20%, mirrored, and combinations);
every other pair is a negative: distinct images, many of them low-detail and alike."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps


@dataclass
class Item:
    image: Image.Image
    source: int  # images with the same source are duplicates of each other
    family: str  # photo, digit, face, text


def _skimage(name: str) -> Image.Image:
    with Image.open(files("skimage") / "data" / name) as image:
        return image.convert("RGB")


PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]


def photos() -> list[Image.Image]:
    """The sample photographs whole, and four quarter crops of each (distinct pictures of one scene)."""
    out = []
    for name in PHOTOS:
        image = _skimage(name)
        w, h = image.size
        out.append(image)
        out += [image.crop((x, y, x + w // 2, y + h // 2)) for x in (0, w // 2) for y in (0, h // 2)]
    return out


def digits() -> list[Image.Image]:
    """scikit-learn's 1,797 scanned digits as 32×32 grey images (dark ink on white)."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    return [
        Image.fromarray((255 - d * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        for d in images
    ]


def faces() -> list[Image.Image]:
    """scikit-image's LFW subset: real 25×25 grey crops (faces and not), kept as 64×64 images, the
    blank ones left out."""
    with (files("skimage") / "data" / "lfw_subset.npy").open("rb") as f:
        stack = np.load(f)
    return [
        Image.fromarray((s * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
        for s in stack
        if s.std() > 0.02
    ]


def texts(count: int, seed: int) -> list[Image.Image]:
    """Short words rendered in black on white, 128×64 grey: a document's label, little more."""
    rng = random.Random(seed)
    font = ImageFont.load_default(size=28)
    out = []
    for _ in range(count):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
        image = Image.new("L", (128, 64), 255)
        ImageDraw.Draw(image).text((rng.randint(4, 24), rng.randint(4, 20)), word, fill=0, font=font)
        out.append(image)
    return out


TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "flip")


def transform(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    w, h = image.size
    if kind == "resize":
        f = rng.uniform(0.5, 2.0)
        return image.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BICUBIC)
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(30, 95))
        return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)
    if kind == "crop":
        c = rng.uniform(0.02, 0.10)
        cw, ch = round(w * (1 - c)), round(h * (1 - c))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return image.crop((x, y, x + cw, y + ch))
    if kind == "brightness":
        return ImageEnhance.Brightness(image).enhance(rng.choice([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.2)]))
    return ImageOps.mirror(image)


def copy_of(image: Image.Image, rng: random.Random) -> Image.Image:
    """One duplicate: one transform, or two or three of them in turn (a quarter each)."""
    kinds = [rng.choice(TRANSFORMS)] if rng.random() < 0.5 else rng.sample(TRANSFORMS, rng.randint(2, 3))
    for kind in kinds:
        image = transform(image, kind, rng)
    return image


def build(seed: int = 0, digit_count: int = 600, text_count: int = 150, copies_share: float = 0.3) -> list[Item]:
    """The benchmark's images: every original once, and one or two copies of a share of them."""
    rng = random.Random(seed)
    originals = (
        [(image, "photo") for image in photos()]
        + [(image, "digit") for image in digits()[:digit_count]]
        + [(image, "face") for image in faces()]
        + [(image, "text") for image in texts(text_count, seed)]
    )
    items = []
    for source, (image, family) in enumerate(originals):
        items.append(Item(image, source, family))
        if rng.random() < copies_share:
            items += [Item(copy_of(image, rng), source, family) for _ in range(rng.randint(1, 2))]
    return items


def write_scans(root, limit: int | None = None, leak_share: float = 0.0, seed: int = 0) -> list[str]:
    """The scanned digits as a dataset of distinct low-detail images: train/valid/test folders of
    32×32 grey PNGs, 70/15/15 within each class. With ``leak_share``, that share of the test images
    is also copied into train, resized and re-encoded as JPEG; returns those test images' paths."""
    from sklearn.datasets import load_digits

    rng = random.Random(seed)
    data = load_digits()
    order = list(range(len(data.images)))[:limit]
    seen: dict[int, int] = {}
    tests = []
    for index in order:
        label = int(data.target[index])
        rank = seen[label] = seen.get(label, -1) + 1
        split = "test" if rank % 20 >= 17 else ("valid" if rank % 20 >= 14 else "train")
        image = Image.fromarray((255 - data.images[index] * 255 / 16).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR
        )
        folder = root / split / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
        if split == "test":
            tests.append((folder / f"{index:04d}.png", image, label))
    leaked = []
    for path, image, label in rng.sample(tests, round(len(tests) * leak_share)):
        side = rng.choice([40, 48, 64])
        image.resize((side, side), Image.Resampling.BICUBIC).save(
            root / "train" / f"digit-{label}" / f"copy-{path.stem}.jpg", quality=rng.randint(75, 95)
        )
        leaked.append(path.relative_to(root).as_posix())
    return sorted(leaked)


def write(items: list[Item], root, seed: int = 0) -> dict[str, int]:
    """The benchmark as a dataset: a class per family, each image in a random split (PNG, lossless,
    so a copy is exactly what its transforms made); returns each file's source."""
    rng = random.Random(seed)
    sources = {}
    for index, item in enumerate(items):
        split = rng.choices(["train", "valid", "test"], [0.6, 0.2, 0.2])[0]
        folder = root / split / item.family
        folder.mkdir(parents=True, exist_ok=True)
        item.image.save(folder / f"{index:05d}.png", compress_level=1)  # the same pixels, in a third of the time
        sources[f"{split}/{item.family}/{index:05d}.png"] = item.source
    return sources
