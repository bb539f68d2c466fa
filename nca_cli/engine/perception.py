"""Perceptions: how a cell sees its neighbourhood.

Each perception maps a state ``(B, C, H, W)`` to features ``(B, F, H, W)``; the registry
:data:`PERCEPTIONS` is keyed by the ``kind`` in the config and each kind validates its own
parameters. Fixed filters are registered buffers, built once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.config import ConfigError, parse, require
from nca_cli.engine.perception_base import Perception, pad, rows
from nca_cli.engine.perception_learned import (
    AttentionParams,
    AttentionPerception,
    DeformableParams,
    DeformablePerception,
)
from nca_cli.engine.update import activation


def max3x3(a: Tensor) -> Tensor:
    """The 3x3 max-pool of a padded ``(B, 1, H+2, W+2)`` tensor, as two separable maxima:
    exactly ``F.max_pool2d(a, 3, stride=1)``, ten times faster on one channel."""
    rows = torch.maximum(torch.maximum(a[..., :-2, :], a[..., 1:-1, :]), a[..., 2:, :])
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def repeat_channels(x: Tensor, n: int) -> Tensor:
    """Each channel ``n`` times in a row, ``[c0, c0, c1, c1, ...]``, in ``x``'s memory format.

    A depthwise convolution with a channel multiplier of ``n`` is a depthwise convolution
    with multiplier 1 of the repeated input; the latter has a fast oneDNN kernel on the CPU
    (channels-last), the former does not (about 6x slower).
    """
    b, c, h, w = x.shape
    if n == 1:
        return x
    if x.is_contiguous(memory_format=torch.channels_last):
        rep = x.permute(0, 2, 3, 1).unsqueeze(-1).expand(b, h, w, c, n)
        return rep.reshape(b, h, w, c * n).permute(0, 3, 1, 2)
    return x.unsqueeze(2).expand(b, c, n, h, w).reshape(b, c * n, h, w)


def depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, radius: int, dilation: int, padding: str
) -> Tensor:
    """A depthwise convolution of ``x`` (``weight.shape[0] / C`` filters per channel) with
    the border of ``padding``, as a multiplier-1 convolution of the repeated channels."""
    x = pad(x, radius, padding) if padding != "zeros" else x
    rep = repeat_channels(x, weight.shape[0] // x.shape[1])
    zeros = radius if padding == "zeros" else 0
    return F.conv2d(rep, weight, bias, padding=zeros, dilation=dilation, groups=weight.shape[0])


def neighbourhoods(x: Tensor, cells: Tensor, size: int, dilation: int, padding: str) -> Tensor:
    """The ``size`` x ``size`` neighbourhoods (taps ``dilation`` apart, the border as
    ``padding``) of the flat cells ``cells`` of ``x``: ``(n, size**2, C)``, taps row-major."""
    _, c, h, w = x.shape
    r = dilation * (size - 1) // 2
    wide = w + 2 * r
    grid, cell = cells.div(h * w, rounding_mode="floor"), cells.remainder(h * w)
    y, col = cell.div(w, rounding_mode="floor"), cell.remainder(w)
    corner = (grid * (h + 2 * r) + y) * wide + col  # the neighbourhood's top-left cell
    taps = torch.arange(size, device=x.device) * dilation
    offsets = (taps[:, None] * wide + taps[None, :]).reshape(1, -1)
    where = (corner[:, None] + offsets).reshape(-1)
    return rows(pad(x, r, padding)).index_select(0, where).view(len(cells), size**2, c)


# Plain numbers: the tensors are made with each perception, none at import time.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))  # / 8
LAPLACIAN = ((1.0, 2.0, 1.0), (2.0, -12.0, 2.0), (1.0, 2.0, 1.0))  # / 16


@dataclass
class SobelParams:
    kind: str = "sobel"
    laplacian: bool = False
    angle: float = 0.0


class SobelPerception(Perception):
    """Identity, Sobel-x/8 and Sobel-y/8 (rotated by ``angle`` degrees), optionally a
    Laplacian, applied to every channel: the Distill growing-NCA perception.

    Features are interleaved per channel, ``[c0_id, c0_dx, c0_dy, c1_id, ...]``, as in
    the original depthwise convolution.
    """

    def __init__(self, channels: int, params: SobelParams, padding: str, where: str) -> None:
        super().__init__()
        identity = torch.zeros(3, 3)
        identity[1, 1] = 1.0
        c, s = math.cos(math.radians(params.angle)), math.sin(math.radians(params.angle))
        sobel_x = torch.tensor(SOBEL_X) / 8.0
        dx = c * sobel_x - s * sobel_x.T
        dy = s * sobel_x + c * sobel_x.T
        laplacian = [torch.tensor(LAPLACIAN) / 16.0] if params.laplacian else []
        filters = [identity, dx, dy, *laplacian]
        kernel = torch.stack(filters)[:, None].repeat(channels, 1, 1, 1)
        self.register_buffer("kernel", kernel, persistent=False)
        # The same filters in filter-major order, for the fused step: column f * C + c of
        # its features is column ``order[f * C + c] = c * n_filters + f`` of ours.
        order = torch.arange(kernel.shape[0]).view(channels, len(filters)).t().flatten()
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("kernel_filter_major", kernel[order], persistent=False)
        self.channels = channels
        self.padding = padding
        self.radius = 1
        self.out_features = channels * len(filters)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv(x, self.kernel, None, 1, 1, self.padding)

    def at_cells(self, x: Tensor, cells: Tensor) -> Tensor | None:
        patches = neighbourhoods(x, cells, 3, 1, self.padding)
        filters = self.kernel[: self.out_features // self.channels, 0].flatten(1)
        return torch.einsum("ntc,ft->ncf", patches, filters).flatten(1)


@dataclass
class ConvParams:
    """A learned convolution; ``kernel_size`` is the perception size.

    ``features`` defaults to three per channel (the size of the Sobel perception);
    ``depthwise`` makes each feature look at one channel only.
    """

    kind: str = "conv"
    kernel_size: int = 3
    dilation: int = 1
    features: int | None = None
    depthwise: bool = False
    bias: bool = True
    activation: str | None = None


class ConvPerception(Perception):
    def __init__(self, channels: int, params: ConvParams, padding: str, where: str) -> None:
        super().__init__()
        k, d = params.kernel_size, params.dilation
        require(k >= 1 and k % 2 == 1, f"{where}.kernel_size", k, "an odd integer >= 1")
        require(d >= 1, f"{where}.dilation", d, "an integer >= 1")
        features = params.features if params.features is not None else 3 * channels
        require(features > 0, f"{where}.features", features, "a positive integer")
        groups = channels if params.depthwise else 1
        require(
            features % groups == 0,
            f"{where}.features",
            features,
            f"a multiple of channels ({channels}) for a depthwise convolution",
        )
        self.conv = nn.Conv2d(channels, features, k, dilation=d, groups=groups, bias=params.bias)
        self.activation = (
            activation(params.activation, f"{where}.activation") if params.activation else None
        )
        self.padding = padding
        self.radius = d * (k - 1) // 2
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        if conv.groups == x.shape[1] and conv.groups > 1:
            y = depthwise_conv(
                x, conv.weight, conv.bias, self.radius, conv.dilation[0], self.padding
            )
        elif self.padding == "zeros":
            y = F.conv2d(
                x,
                self.conv.weight,
                self.conv.bias,
                padding=self.radius,
                dilation=self.conv.dilation,
                groups=self.conv.groups,
            )
        else:
            y = self.conv(pad(x, self.radius, self.padding))
        return self.activation(y) if self.activation is not None else y

    def at_cells(self, x: Tensor, cells: Tensor) -> Tensor | None:
        """The convolution at ``cells`` as a product with their gathered neighbourhoods,
        so that a cell whose update is not used costs nothing, forward and backward."""
        conv = self.conv
        k, c = conv.kernel_size[0], x.shape[1]
        patches = neighbourhoods(x, cells, k, conv.dilation[0], self.padding)
        if conv.groups == 1:
            kernel = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
            out = F.linear(patches.flatten(1), kernel, conv.bias)
        else:  # depthwise: each channel's filters on its own taps
            kernel = conv.weight.view(c, -1, k * k)
            out = torch.einsum("ntc,cft->ncf", patches, kernel).flatten(1)
            out = out if conv.bias is None else out + conv.bias
        return self.activation(out) if self.activation is not None else out


class ResidualPerception(Perception):
    """The cell's own state concatenated with a learned convolution of its neighbourhood."""

    def __init__(self, channels: int, params: ConvParams, padding: str, where: str) -> None:
        super().__init__()
        self.conv = ConvPerception(channels, params, padding, where)
        self.radius = self.conv.radius
        self.out_features = channels + self.conv.out_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(x)], dim=1)

    def at_cells(self, x: Tensor, cells: Tensor) -> Tensor | None:
        conv = self.conv.at_cells(x, cells)
        if conv is None:
            return None
        return torch.cat([rows(x).index_select(0, cells), conv], dim=1)


@dataclass
class MultiParams:
    """Several perceptions side by side; their features are concatenated."""

    kind: str = "multi"
    components: list[dict[str, Any]] = field(default_factory=list)


class MultiPerception(Perception):
    def __init__(self, channels: int, params: MultiParams, padding: str, where: str) -> None:
        super().__init__()
        require(len(params.components) > 0, f"{where}.components", [], "at least one perception")
        self.parts = nn.ModuleList(
            build_perception(part, channels, padding, f"{where}.components[{i}]")
            for i, part in enumerate(params.components)
        )
        self.radius = max(p.radius for p in self.parts)
        self.out_features = sum(p.out_features for p in self.parts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([p(x) for p in self.parts], dim=1)

    def at_cells(self, x: Tensor, cells: Tensor) -> Tensor | None:
        parts = []
        for perception in self.parts:
            part = perception.at_cells(x, cells)
            if part is None:
                return None
            parts.append(part)
        return torch.cat(parts, dim=1)


def perception_flops(perception: nn.Module) -> tuple[float, float]:
    """Forward FLOPs per cell of (learned, fixed) filters: 2 per multiply-add."""
    learned, fixed = 0.0, 0.0
    for m in perception.modules():
        if isinstance(m, nn.Conv2d):
            out, per_group, kh, kw = m.weight.shape
            learned += 2.0 * out * per_group * kh * kw
        elif isinstance(m, SobelPerception):
            fixed += 2.0 * m.kernel.numel()
    return learned, fixed


PERCEPTIONS: dict[str, tuple[type, type[Perception]]] = {
    "sobel": (SobelParams, SobelPerception),
    "conv": (ConvParams, ConvPerception),
    "residual": (ConvParams, ResidualPerception),
    "multi": (MultiParams, MultiPerception),
    "attention": (AttentionParams, AttentionPerception),
    "deformable": (DeformableParams, DeformablePerception),
}


def build_perception(
    cfg: Mapping[str, Any], channels: int, padding: str, where: str = "perception"
) -> Perception:
    """Build the perception named by ``cfg['kind']``, validating its parameters."""
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in PERCEPTIONS:
        raise ConfigError(
            f"invalid value for '{where}.kind': {kind!r}; expected one of "
            + ", ".join(sorted(PERCEPTIONS))
        )
    schema, module = PERCEPTIONS[kind]
    return module(channels, parse(dict(cfg), schema, where), padding, where)
