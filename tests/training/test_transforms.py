import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from trainlib.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, resize_size, train_transform

GREY_LEVEL = 1 / 255 / min(IMAGENET_STD)  # one 8-bit step, after normalisation


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with noise on top: edges and flat areas, as a photo has."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def pillow_eval(image_size: int) -> v2.Compose:
    """The eval transform as Pillow computes it (what earlier models were evaluated with)."""
    return v2.Compose(
        [
            v2.Resize(resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (200, 150), (224, 224), (1024, 683)])
def test_eval_transform_agrees_with_pillow_to_one_grey_level(size):
    image = photo(*size)
    ours, pillows = eval_transform(224)(image), pillow_eval(224)(image)
    assert ours.shape == pillows.shape == (3, 224, 224) and ours.dtype == torch.float32
    difference = (ours - pillows).abs()
    assert difference.max() <= GREY_LEVEL * 1.001
    assert difference.mean() < GREY_LEVEL / 4  # rounding, not a shifted or blurred image


def test_train_transform_gives_the_network_input_from_any_photo():
    torch.manual_seed(0)
    for size in [(500, 375), (120, 90), (64, 640)]:
        out = train_transform(96)(photo(*size))
        assert out.shape == (3, 96, 96) and out.dtype == torch.float32
        # Normalised as evaluation is: the same photo's statistics, not a second scale.
        assert abs(out.mean().item() - eval_transform(96)(photo(*size)).mean().item()) < 0.5
