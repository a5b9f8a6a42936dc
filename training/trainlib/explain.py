"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for the top class lies.

The top class's score is differentiated with respect to one late layer's activations (``LAYERS``: the
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
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

METHOD = "grad-cam"


def _resnet(model: nn.Module) -> tuple[str, nn.Module]:
    return "layer4", model.layer4


def _features(model: nn.Module) -> tuple[str, nn.Module]:
    return f"features.{len(model.features) - 1}", model.features[-1]


def _regnet(model: nn.Module) -> tuple[str, nn.Module]:
    return "trunk_output", model.trunk_output


def _vit(model: nn.Module) -> tuple[str, nn.Module]:
    return f"encoder.layers.{len(model.encoder.layers) - 1}", model.encoder.layers[-1]


# The layer each architecture family explains from (by the prefix of its name in trainlib.models.ARCHS).
LAYERS: dict[str, Callable[[nn.Module], tuple[str, nn.Module]]] = {
    "resnet": _resnet,
    "convnext": _features,
    "efficientnet": _features,
    "regnet": _regnet,
    "vit": _vit,
}


def target_layer(arch: str, model: nn.Module) -> tuple[str, nn.Module]:
    family = next(prefix for prefix in LAYERS if arch.startswith(prefix))
    return LAYERS[family](model)


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
    y, x = np.unravel_index(int(np.argmax(crop)), crop.shape)
    heatmap = Image.new("L", (width, height))
    heatmap.paste(Image.fromarray(crop), (left, top))
    buffer = io.BytesIO()
    heatmap.save(buffer, format="PNG")
    return {
        "size": [height, width],
        "peak": [int(min(width - 1, left + x)), int(min(height - 1, top + y))],
        "heatmap_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
