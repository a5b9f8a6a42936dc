"""torchvision ResNets with a new classification head, and ImageNet weights loaded offline-first."""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

from trainlib.errors import TrainingError, WeightsUnavailableError

ARCHS: dict[str, tuple[Callable[..., nn.Module], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}
WEIGHTS = ("imagenet", "none")


def weights_cache_path(arch: str) -> Path:
    """Where torch hub keeps (and looks for) the ImageNet weights of ``arch``."""
    url = ARCHS[arch][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict from the torch hub cache, downloading it when not cached."""
    weights = ARCHS[arch][1]
    cached = weights_cache_path(arch)
    try:
        return weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded from {weights.url} ({exc}). With no network, copy that file to {cached} "
            "(or set TORCH_HOME), or train from scratch with --weights none."
        ) from exc


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A ResNet whose ``fc`` has ``num_classes`` outputs; the backbone from ImageNet or scratch."""
    if arch not in ARCHS:
        raise TrainingError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if weights not in WEIGHTS:
        raise TrainingError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    if num_classes < 2:
        raise TrainingError(f"a classifier needs at least 2 classes, got {num_classes}")
    constructor = ARCHS[arch][0]
    model = constructor(weights=None)
    if weights == "imagenet":
        model.load_state_dict(load_imagenet_state_dict(arch))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def backbone_of(model: nn.Module) -> nn.Module:
    """Everything but the head: images in, pooled feature vectors out."""
    return nn.Sequential(*(m for name, m in model.named_children() if name != "fc"), nn.Flatten(1))


def freeze_backbone(model: nn.Module) -> None:
    """No gradient for anything but ``fc``: backward never runs through the backbone."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("fc.")


class FrozenBackboneClassifier(nn.Module):
    """Backbone under ``no_grad`` in eval mode (BatchNorm statistics stay frozen) + trainable head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = backbone_of(model)
        self.head = model.fc
        for param in self.backbone.parameters():
            param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)
