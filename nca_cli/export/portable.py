"""A trained NCA as plain arrays and numbers: what a step written in another language (C, a
WebGL shader) needs, and nothing of PyTorch. Every perception it takes becomes a list of
convolutions of the state (the Sobel filters are a depthwise convolution with fixed
weights), whose features are concatenated and fed to the update MLP; the rest of the step
(fire mask, residual, alive masking, fixed channels, padding) is the one ``reference_step``
defines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nca_cli.engine.cascade import CascadeNCA
from nca_cli.engine.nca import NCA
from nca_cli.engine.perception import (
    ConvPerception,
    MultiPerception,
    ResidualPerception,
    SobelPerception,
)
from nca_cli.engine.update import ACTIVATIONS
from nca_cli.errors import ConfigError
from nca_cli.export import ExportError

# Activations the ports implement (every one of the engine's).
PORTED_ACTIVATIONS = tuple(ACTIVATIONS)
PADDINGS = ("zeros", "circular", "reflect")
GROWN = 24  # steps grown from the seed for the states the exports' checks compare


@dataclass
class Convolution:
    """One perception convolution: ``features`` outputs, each from one channel
    (``depthwise``, output ``f`` reads channel ``f // (features / channels)``) or from all;
    ``weight`` is ``(features, 1 or channels, kernel, kernel)``. ``kernel == 1`` with an
    identity weight passes the state through (the residual perception's own state)."""

    kernel: int
    dilation: int
    features: int
    depthwise: bool
    weight: np.ndarray
    bias: np.ndarray | None
    activation: str | None
    parameter: nn.Parameter | None  # the trained weight it copies; None for fixed filters


@dataclass
class Layer:
    """One linear layer of the update MLP: ``weight`` is ``(out, in)``."""

    weight: np.ndarray
    bias: np.ndarray
    parameter: nn.Parameter


@dataclass
class PortableNCA:
    """The step of one NCA on a ``height`` x ``width`` grid of ``channels`` channels."""

    height: int
    width: int
    channels: int
    fixed: int  # leading channels the update never writes
    padding: str
    alive_channel: int | None
    alive_threshold: float
    alive_pool: bool
    fire_rate: float
    convolutions: list[Convolution]
    layers: list[Layer]
    activation: str

    @property
    def features(self) -> int:
        return sum(c.features for c in self.convolutions)

    @property
    def bias_bytes(self) -> int:
        convs = sum(c.bias.nbytes for c in self.convolutions if c.bias is not None)
        return convs + sum(layer.bias.nbytes for layer in self.layers)

    @property
    def float32_bytes(self) -> int:
        """The weights and biases as float32 (fixed filters included)."""
        weights = sum(c.weight.nbytes for c in self.convolutions)
        return weights + sum(layer.weight.nbytes for layer in self.layers) + self.bias_bytes

    @property
    def radius(self) -> int:
        return max(c.dilation * (c.kernel - 1) // 2 for c in self.convolutions)


def perception_kinds(perception: dict[str, Any]) -> list[str]:
    """Every perception kind in a perception config (a multi perception's components too)."""
    kinds = [str(perception.get("kind"))]
    for part in perception.get("components") or []:
        kinds += perception_kinds(part)
    return kinds


def portable(
    nca: NCA | CascadeNCA, config: dict[str, Any], grid: tuple[int, int], fmt: str
) -> PortableNCA:
    """The NCA as a :class:`PortableNCA`, or an ExportError naming what ``fmt`` cannot take."""
    if isinstance(nca, CascadeNCA):
        raise ExportError(
            "a multi-scale cascade (model.scales) is several NCAs: export one scale's run"
        )
    if nca.update_noise > 0:
        raise ExportError(
            f"model.update_noise={nca.update_noise} adds noise to every update; the {fmt} "
            "export's step takes only the fire mask: export with --format onnx (noise an "
            "input) or train with model.update_noise=0"
        )
    convolutions = _convolutions(nca.perception, config.get("perception", {}), fmt)
    act = _activation_name(nca)
    if act not in PORTED_ACTIVATIONS:
        raise ExportError(f"activation {act!r} has no {fmt} port")
    if nca.padding not in PADDINGS:
        raise ExportError(f"model.padding={nca.padding!r} has no {fmt} port")
    layers = [
        Layer(_array(layer.weight), _array(layer.bias), layer.weight)
        for layer in nca.update.layers
        if isinstance(layer, nn.Linear)
    ]
    return PortableNCA(
        height=grid[0],
        width=grid[1],
        channels=nca.layout.channels,
        fixed=nca.layout.fixed,
        padding=nca.padding,
        alive_channel=nca.alive_channel,
        alive_threshold=float(nca.alive_threshold),
        alive_pool=bool(nca.alive_pool),
        fire_rate=float(nca.fire_rate),
        convolutions=convolutions,
        layers=layers,
        activation=act,
    )


def _activation_name(nca: NCA) -> str:
    """The config name of the update MLP's activation."""
    for name, fn in ACTIVATIONS.items():
        if fn is nca.update.act or (
            getattr(fn, "func", None) is getattr(nca.update.act, "func", False)
            and getattr(fn, "keywords", None) == getattr(nca.update.act, "keywords", None)
        ):
            return name
    raise ConfigError(f"the update MLP's activation {nca.update.act!r} is not one of the engine's")


def _convolutions(perception: nn.Module, cfg: dict[str, Any], fmt: str) -> list[Convolution]:
    if isinstance(perception, SobelPerception):
        kernel = _array(perception.kernel)
        return [Convolution(3, 1, kernel.shape[0], True, kernel, None, None, None)]
    if isinstance(perception, ConvPerception):
        conv = perception.conv
        act = cfg.get("activation")
        return [
            Convolution(
                kernel=conv.kernel_size[0],
                dilation=conv.dilation[0],
                features=conv.out_channels,
                depthwise=conv.groups > 1,
                weight=_array(conv.weight),
                bias=None if conv.bias is None else _array(conv.bias),
                activation=str(act) if act else None,
                parameter=conv.weight,
            )
        ]
    if isinstance(perception, ResidualPerception):
        c = perception.out_features - perception.conv.out_features
        identity = np.ones((c, 1, 1, 1), dtype=np.float32)
        own = Convolution(1, 1, c, True, identity, None, None, None)
        return [own, *_convolutions(perception.conv, cfg, fmt)]
    if isinstance(perception, MultiPerception):
        parts = cfg.get("components") or [{}] * len(perception.parts)
        return [
            conv
            for part, part_cfg in zip(perception.parts, parts, strict=True)
            for conv in _convolutions(part, part_cfg, fmt)
        ]
    kind = perception_kinds(cfg)[0] if cfg else type(perception).__name__
    raise ExportError(
        f"perception {kind!r} cannot be exported to {fmt}: its step is not a set of "
        "convolutions (supported: sobel, conv, dilated, residual, multi of these)"
    )


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def seed_entries(seed_state: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A seed state ``(1, C, H, W)`` as the indices (channels last) and values of its
    nonzero entries: the seed a port starts from, small however large the grid."""
    flat = seed_state[0].permute(1, 2, 0).reshape(-1).numpy()
    index = np.flatnonzero(flat)
    return index, flat[index]
