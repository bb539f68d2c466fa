"""Texture synthesis (Niklasson et al. 2021; Spitznagel & Keuper 2026): grow, from an empty
grid, a pattern whose VGG16 feature statistics match a sample image.

The loss is the sliced optimal-transport style loss (sorted random projections of VGG16
activations, compared with the sample's) plus ``loss.overflow`` times the overflow penalty
that keeps RGB in [0, 1] and hidden channels in [-1, 1]. Every cell lives; the pool gives
persistence, and ``nca eval`` measures regeneration with the style loss.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from nca_cli.config import ConfigError, require
from nca_cli.datasets.storage import data_root
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import image_tensor, read_image, to_uint8
from nca_cli.tasks.base import LossConfig, RunSections, Task

# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of torchvision's vgg16().features.
STYLE_LAYERS = (1, 6, 11, 18, 25)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG16 pools four times before relu5_1: smaller images are upsampled to this side.
MIN_SIDE = 32


@functools.cache
def _vgg_cpu() -> nn.Sequential:
    from torchvision.models import VGG16_Weights, vgg16

    features = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features[: STYLE_LAYERS[-1] + 1]
    return features.eval().requires_grad_(False)


_VGG_ON: dict[str, nn.Sequential] = {}


def vgg_features(device: torch.device) -> nn.Sequential:
    """The frozen VGG16 feature extractor on ``device``, loaded once per process
    (weights through ``TORCH_HOME``)."""
    key = str(device)
    if key not in _VGG_ON:
        cpu = _vgg_cpu()
        _VGG_ON[key] = cpu if device.type == "cpu" else copy.deepcopy(cpu).to(device)
    return _VGG_ON[key]


def style_activations(rgb: Tensor) -> list[Tensor]:
    """VGG16 activations ``(B, C, N)`` at :data:`STYLE_LAYERS` of RGB images in [0, 1]."""
    side = min(rgb.shape[-2:])
    if side < MIN_SIDE:
        rgb = F.interpolate(rgb, scale_factor=math.ceil(MIN_SIDE / side), mode="bilinear")
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device).view(1, 3, 1, 1)
    x = (rgb.float() - mean) / std
    out = []
    for i, layer in enumerate(vgg_features(rgb.device)):
        x = layer(x)
        if i in STYLE_LAYERS:
            out.append(x.flatten(2))
    return out


def sliced_ot_loss(
    features: list[Tensor], target: list[Tensor], generator: torch.Generator | None = None
) -> Tensor:
    """Per-sample ``(B,)`` sliced optimal-transport distance between each sample's
    activations and the target's (batch 1): per layer, project on random unit directions,
    sort, and compare the sorted values (the target's resampled to the sample's count)."""
    total = features[0].new_zeros(features[0].shape[0])
    for fx, ft in zip(features, target, strict=True):
        c, n = fx.shape[1], fx.shape[2]
        proj = F.normalize(torch.randn(c, c, generator=generator), dim=1).to(fx.device)
        px = torch.einsum("pc,bcn->bpn", proj, fx).sort(dim=2).values
        pt = torch.einsum("pc,bcn->bpn", proj, ft).sort(dim=2).values
        if pt.shape[2] != n:
            pt = F.interpolate(pt, size=n, mode="nearest")
        total = total + (px - pt).square().mean(dim=(1, 2))
    return total


def load_texture(target: str, size: int, key: str = "dataset.target") -> Tensor:
    """The sample image ``(3, size, size)`` in [0, 1]: its centred square, resized.
    A relative ``target`` is found under ``NCA_DATA_DIR``."""
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = data_root() / path
    if not path.is_file():
        raise ConfigError(
            f"invalid value for '{key}': {target!r}: no image file at {path} (a relative "
            "path is taken under NCA_DATA_DIR)"
        )
    image = read_image(path, "RGB", ConfigError)
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    image = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
    return image_tensor(image)


@dataclass
class TextureDataset:
    """``target``: the sample image (relative to NCA_DATA_DIR, or absolute); its centred
    square is resized to ``target_size``; ``size``: the side of the grid the NCA grows on."""

    target: str = "dtd/bubbly_0101.jpg"
    target_size: int = 128
    size: int = 128


@dataclass
class TextureLoss(LossConfig):
    """``overflow``: weight of the penalty on RGB outside [0, 1] and hidden outside [-1, 1]."""

    name: str = "sot"
    overflow: float = 1.0


class TextureTask(Task):
    dataset_schema = TextureDataset
    loss_schema = TextureLoss
    losses = ("sot",)
    objective = ("style", "minimize")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d = self.dataset_config
        require(d.size >= 1, "dataset.size", d.size, "a positive integer")
        require(d.target_size >= MIN_SIDE, "dataset.target_size", d.target_size, f">= {MIN_SIDE}")
        require(self.loss_config.overflow >= 0, "loss.overflow", self.loss_config.overflow, ">= 0")
        self.target = load_texture(d.target, d.target_size)
        self._target_features: dict[str, list[Tensor]] = {}

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, visible=3, alpha=None)

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        """Empty grids: the stochastic updates break the symmetry."""
        size = self.dataset_config.size
        return {"state": torch.zeros(n, self.layout.channels, size, size)}

    def target_features(self, device: torch.device) -> list[Tensor]:
        key = str(device)
        if key not in self._target_features:
            with torch.no_grad():
                self._target_features[key] = style_activations(self.target[None].to(device))
        return self._target_features[key]

    def style(self, state: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rgb = state[:, self.layout.visible_slice]
        return sliced_ot_loss(style_activations(rgb), self.target_features(state.device), generator)

    def overflow(self, state: Tensor) -> Tensor:
        """mean(relu(rgb − 1) + relu(−rgb)) + mean(relu(|hidden| − 1)) per sample."""
        state = state.float()
        rgb = state[:, self.layout.visible_slice]
        hidden = state[:, self.layout.visible_slice.stop :]
        over = (F.relu(rgb - 1.0) + F.relu(-rgb)).mean(dim=(1, 2, 3))
        if hidden.shape[1]:
            over = over + F.relu(hidden.abs() - 1.0).mean(dim=(1, 2, 3))
        return over

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        return self.style(state) + self.loss_config.overflow * self.overflow(state)

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Style measured with fixed projections, so figures compare across steps and runs."""
        style = self.style(state, torch.Generator().manual_seed(0))
        return {"style": style.detach(), "overflow": self.overflow(state).detach()}

    def render(self, state: Tensor) -> np.ndarray:
        rgb = state[:, self.layout.visible_slice].detach().float().clamp(0.0, 1.0).cpu()
        return to_uint8(rgb.permute(0, 2, 3, 1).numpy())


TASK = TextureTask
