"""Image decoding and transforms: the one source that training and inference both use.

Inference must see exactly what evaluation saw, so ``eval_transform`` and ``to_rgb`` are
imported by the serving code (``trainlib.predictor``) from here rather than rewritten.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """The shorter side before the centre crop (256 for 224, as torchvision's references)."""
    return int(round(image_size * 256 / 224))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (grayscale, 16-bit, palette, with or without transparency) to 8-bit RGB, upright.

    Transparent pixels are composited onto white rather than dropped, because a dropped alpha
    channel exposes whatever colour the encoder left under it (often black).
    """
    return _flatten(ImageOps.exif_transpose(img) or img)


# EXIF orientation → the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STRIP_ROWS = 64  # output rows per strip when reducing


def to_rgb_reduced(img: Image.Image, factor: int) -> Image.Image:
    """``to_rgb(img)`` reduced by a whole ``factor`` (box filter), worked strip by strip: memory
    beyond the decoded image stays a few megabytes whatever its size or mode (a full-size RGB or
    premultiplied copy of a 40-megapixel PNG would double it)."""
    width, height = img.width // factor, img.height // factor
    out = Image.new("RGB", (width, height))
    for top in range(0, height, _STRIP_ROWS):
        rows = min(_STRIP_ROWS, height - top)
        strip = img.crop((0, top * factor, width * factor, (top + rows) * factor))
        out.paste(_flatten(strip).reduce(factor), (0, top))
    method = _UPRIGHT.get(img.getexif().get(0x0112))
    return out.transpose(method) if method is not None else out


def _flatten(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        # Pasted through its alpha onto white: one RGB image and one channel beside the original,
        # not three RGBA copies as alpha_composite would need.
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG bytes to an RGB image; raises ``OSError``/``ValueError`` when undecodable."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


# The transforms resize 8-bit tensors, not PIL images: torchvision's uint8 kernels take about half of
# Pillow's time (docs/performance.md), time that a CPU endpoint's replica spends on its event loop and
# training in its loader. The two
# antialiased bilinears agree to one grey level. Part of the feature cache's key (batches.py).
RESIZE = "torch-uint8"


def _normalize(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int | None = None) -> v2.Compose:
    """Resize the short side to ``resize`` (the architecture's weights say how much: ``models.Arch``; 256 for
    224 where nothing says), then the centre ``image_size`` crop."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize or resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
            *_normalize(mean, std),
        ]
    )


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, trivial: bool = False) -> v2.Compose:
    """Random crops and flips; with ``trivial``, TrivialAugmentWide after them (on uint8, as it expects)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            *([v2.TrivialAugmentWide()] if trivial else []),
            *_normalize(mean, std),
        ]
    )
