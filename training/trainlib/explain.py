"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for the top class lies.

The top class's score is differentiated with respect to one late layer's activations (``CANDIDATES``: the
last stage of convolutions, or the last transformer block, whose tokens are laid back on their grid);
each channel weighs by its mean gradient, and the weighted sum's positive part is the map. It costs one
backward pass to that layer. Written here rather than taken from a library because it is this short and
the serving image must run it with what it has (torch alone: an endpoint in a VPC installs nothing).

The map covers what the network saw, the centre crop of the resized image; it is laid back onto the
image the client sent, at that image's size (zero outside the crop), as a grey PNG.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image
from torch import nn

METHOD = "grad-cam"


# Each family's candidate layers, deepest first, with their stride: the deepest whose map has at least
# MIN_GRID cells a side explains (the last stage at 224 px, as Grad-CAM is usually run); a smaller input
# takes an earlier stage, since a 2 x 2 map (ResNet-18's last stage at 64 px) cannot say where anything is.
# ViT's grid is its 14 x 14 patches whatever the layer: its last block.
CANDIDATES: dict[str, tuple[tuple[str, int], ...]] = {
    "resnet": (("layer4", 32), ("layer3", 16), ("layer2", 8)),
    "convnext": (("features.7", 32), ("features.5", 16), ("features.3", 8)),
    "efficientnet": (("features.7", 32), ("features.5", 16), ("features.3", 8)),
    "regnet": (("trunk_output", 32), ("trunk_output.block3", 16), ("trunk_output.block2", 8)),
    "vit": (("encoder.layers.encoder_layer_11", 16),),
}
MIN_GRID = 7


def target_layer(arch: str, model: nn.Module, image_size: int = 224) -> tuple[str, nn.Module]:
    """The layer that explains ``arch`` at ``image_size``: its name and the module."""
    family = next(prefix for prefix in CANDIDATES if arch.startswith(prefix))
    candidates = CANDIDATES[family]
    name = next((path for path, stride in candidates if image_size // stride >= MIN_GRID), candidates[-1][0])
    return name, model.get_submodule(name)


def _as_grid(activations: torch.Tensor) -> torch.Tensor:
    """``(1, C, h, w)``; a transformer's ``(1, 1 + h·w, C)`` tokens without the class token, on their grid."""
    if activations.dim() == 4:
        return activations
    tokens = activations[:, 1:, :]
    side = math.isqrt(tokens.shape[1])
    return tokens.reshape(1, side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def grad_cam(model: nn.Module, layer: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, map)`` for a batch of one: the map ``(h, w)`` in [0, 1] for the top class."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: kept.append(output))
    try:
        with torch.enable_grad():
            logits = model(batch)
            activations = kept[0]
            (gradients,) = torch.autograd.grad(logits[0, logits[0].argmax()], activations)
    finally:
        handle.remove()
    activations, gradients = _as_grid(activations.detach()), _as_grid(gradients)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1))[0].float()
    peak = float(cam.max())
    return logits.detach(), (cam / peak if peak > 0 else cam)


def lay_back(cam: torch.Tensor, image_size: int, resize: int, source: tuple[int, int]) -> dict:
    """The map on the client's image (``source`` = width, height): the API's ``explanation`` fields. The
    network saw the centre ``image_size`` crop of the image resized to a ``resize`` short side."""
    width, height = source
    side = image_size * min(width, height) / resize  # the centre crop, in source pixels
    left, top = round((width - side) / 2), round((height - side) / 2)
    span = max(1, round(side))
    grey = Image.fromarray((cam.cpu().numpy() * 255).round().astype(np.uint8))
    crop = np.asarray(grey.resize((span, span), Image.Resampling.BILINEAR))
    heatmap = Image.new("L", (width, height))
    heatmap.paste(Image.fromarray(crop), (left, top))
    buffer = io.BytesIO()
    heatmap.save(buffer, format="PNG")
    row, column = centre(cam.cpu().numpy())
    rows, columns = cam.shape
    x, y = left + column / columns * side, top + row / rows * side
    return {
        "size": [height, width],
        "peak": [int(min(width - 1, max(0, x))), int(min(height - 1, max(0, y)))],
        "heatmap_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }


def centre(cam: np.ndarray) -> tuple[float, float]:
    """Where the evidence is, in cells (row, column; a cell's centre at .5): the strongest cell and those of
    its neighbours at half its strength or more, weighed by strength. Finer than the strongest cell alone
    (a map has 7 to 14 cells a side), and never pulled between two distant blobs."""
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    window = cam[max(0, i - 1) : i + 2, max(0, j - 1) : j + 2]
    weights = np.where(window >= 0.5 * cam[i, j], window, 0.0)
    if weights.sum() <= 0:
        return i + 0.5, j + 0.5
    rows, columns = np.mgrid[max(0, i - 1) : i + 2, max(0, j - 1) : j + 2][:, : window.shape[0], : window.shape[1]]
    return float((weights * (rows + 0.5)).sum() / weights.sum()), float(
        (weights * (columns + 0.5)).sum() / weights.sum()
    )
