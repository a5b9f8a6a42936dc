"""torchvision classifiers (ResNets, ConvNeXt, EfficientNetV2, RegNetY, ViT) with a new classification head,
and ImageNet weights loaded offline-first."""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

from trainlib.errors import TrainingError, WeightsUnavailableError


@dataclass(frozen=True)
class Arch:
    """A torchvision classifier: its constructor, its ImageNet weights (whose ``transforms()`` are its
    preprocessing), the module after its pooled features (``head``: what head mode trains) and the
    ``Linear`` in it that gets one output per class."""

    build: Callable[..., nn.Module]
    weights: models.WeightsEnum
    head: str
    linear: str

    def preprocessing(self, image_size: int | None = None) -> tuple[int, int]:
        """``(crop, resize)``: the weights' own, or ``image_size`` with their resize-to-crop ratio."""
        preset = self.weights.transforms()
        crop, resize = preset.crop_size[0], preset.resize_size[0]
        if image_size is None or image_size == crop:
            return crop, resize
        return image_size, int(round(image_size * resize / crop))


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, "fc", "fc"),
    "resnet34": Arch(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "fc", "fc"),
    "resnet50": Arch(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, "fc", "fc"),
    "convnext_tiny": Arch(
        models.convnext_tiny, models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2", "classifier.2"
    ),
    "efficientnet_v2_s": Arch(
        models.efficientnet_v2_s, models.EfficientNet_V2_S_Weights.IMAGENET1K_V1, "classifier", "classifier.1"
    ),
    "regnet_y_1_6gf": Arch(models.regnet_y_1_6gf, models.RegNet_Y_1_6GF_Weights.IMAGENET1K_V2, "fc", "fc"),
    # ViT-B/16's position embeddings are for 224-pixel images (14 x 14 patches): no other size.
    "vit_b_16": Arch(models.vit_b_16, models.ViT_B_16_Weights.IMAGENET1K_V1, "heads", "heads.head"),
}
FIXED_SIZE = {"vit_b_16": 224}
WEIGHTS = ("imagenet", "none")


def weights_cache_path(arch: str) -> Path:
    """Where torch hub keeps (and looks for) the ImageNet weights of ``arch``."""
    url = ARCHS[arch].weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict from the torch hub cache, downloading it when not cached."""
    weights = ARCHS[arch].weights
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
    """The ``arch`` whose last ``Linear`` has ``num_classes`` outputs; the backbone from ImageNet or scratch."""
    if arch not in ARCHS:
        raise TrainingError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if weights not in WEIGHTS:
        raise TrainingError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
    if num_classes < 2:
        raise TrainingError(f"a classifier needs at least 2 classes, got {num_classes}")
    spec = ARCHS[arch]
    model = spec.build(weights=None)
    if weights == "imagenet":
        model.load_state_dict(load_imagenet_state_dict(arch))
    parent, _, name = spec.linear.rpartition(".")
    old = model.get_submodule(spec.linear)
    setattr(model.get_submodule(parent), name, nn.Linear(old.in_features, num_classes))
    return model


def head_of(model: nn.Module, arch: str) -> nn.Module:
    """What follows the pooled features: trained alone in head mode."""
    return model.get_submodule(ARCHS[arch].head)


class _VitFeatures(nn.Module):
    """ViT's forward up to its class token (torchvision's ``VisionTransformer.forward`` without ``heads``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vit = [model]  # not a submodule: its heads are not the backbone's
        self.conv_proj, self.encoder = model.conv_proj, model.encoder
        self.class_token = model.class_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit[0]._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)[:, 0]


def backbone_of(model: nn.Module, arch: str) -> nn.Module:
    """Everything before the head: images in, pooled feature vectors out."""
    if arch.startswith("vit"):
        return _VitFeatures(model)
    head = ARCHS[arch].head

    def before(module: nn.Module, prefix: str) -> list[nn.Module]:
        parts: list[nn.Module] = []
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path == head:
                break
            if head.startswith(path + "."):  # the head sits inside this child (ConvNeXt's classifier)
                parts += before(child, path + ".")
                break
            parts.append(child)
        return parts

    return nn.Sequential(*before(model, ""), nn.Flatten(1))


def freeze_backbone(model: nn.Module, arch: str) -> None:
    """No gradient for anything but the head: backward never runs through the backbone."""
    prefix = ARCHS[arch].head + "."
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(prefix)


class FrozenBackboneClassifier(nn.Module):
    """Backbone under ``no_grad`` in eval mode (BatchNorm statistics stay frozen) + trainable head."""

    def __init__(self, model: nn.Module, arch: str):
        super().__init__()
        self.backbone = backbone_of(model, arch)
        self.head = head_of(model, arch)
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
