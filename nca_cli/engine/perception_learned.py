"""Learned perceptions of the review paper (Spitznagel & Keuper 2026): local self-attention
and deformable convolution. Both pad with the configured mode and declare their reach in
``radius``, so the engine's padding and the receptive-field guarantees hold for them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.config import require
from nca_cli.engine.perception_base import Perception, pad


@dataclass
class AttentionParams:
    """Each cell attends to the ``(2 radius + 1)^2`` cells around it (itself included) with
    ``heads`` heads of ``head_dim`` features and a learned bias per head and relative
    position; ``features`` (default three per channel) is the output size."""

    kind: str = "attention"
    radius: int = 1
    heads: int = 4
    head_dim: int = 8
    features: int | None = None


class AttentionPerception(Perception):
    def __init__(self, channels: int, params: AttentionParams, padding: str, where: str) -> None:
        super().__init__()
        require(params.radius >= 1, f"{where}.radius", params.radius, "an integer >= 1")
        require(params.heads >= 1, f"{where}.heads", params.heads, "an integer >= 1")
        require(params.head_dim >= 1, f"{where}.head_dim", params.head_dim, "an integer >= 1")
        features = params.features if params.features is not None else 3 * channels
        require(features > 0, f"{where}.features", features, "a positive integer")
        inner = params.heads * params.head_dim
        self.query = nn.Conv2d(channels, inner, 1)
        self.key_value = nn.Conv2d(channels, 2 * inner, 1)
        self.out = nn.Conv2d(inner, features, 1)
        window = (2 * params.radius + 1) ** 2
        self.position = nn.Parameter(torch.zeros(params.heads, window))
        self.heads, self.head_dim = params.heads, params.head_dim
        self.padding = padding
        self.radius = params.radius
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        n, d, k = self.heads, self.head_dim, 2 * self.radius + 1
        q = self.query(x).reshape(b, n, d, h, w) / math.sqrt(d)
        # Keys and values of the padded grid; each window position is a shifted view of
        # them (row-major, F.unfold's order), so no (window x cells) copy is made: the
        # unfolded form costs 9x the memory and, with autograd, 2.3x the time.
        kv = self.key_value(pad(x, self.radius, self.padding))
        kv = kv.reshape(b, 2, n, d, h + k - 1, w + k - 1)
        shifts = [(i, j) for i in range(k) for j in range(k)]
        scores = torch.stack(
            [(q * kv[:, 0, ..., i : i + h, j : j + w]).sum(2) for i, j in shifts], 2
        )
        # (b, heads, window, h, w)
        attn = (scores + self.position[None, :, :, None, None]).softmax(dim=2)
        y = attn[:, :, 0, None] * kv[:, 1, ..., :h, :w]
        for o, (i, j) in enumerate(shifts[1:], 1):
            y = y + attn[:, :, o, None] * kv[:, 1, ..., i : i + h, j : j + w]
        return self.out(y.reshape(b, n * d, h, w))


@dataclass
class DeformableParams:
    """A ``kernel_size`` convolution whose sampling points move by learned offsets.

    The offsets come from a convolution of the same size, zero-initialised (the perception
    starts as a plain convolution), and are bounded by ``max_offset · tanh``: a cell sees at
    most ``(kernel_size - 1) / 2 + ceil(max_offset)`` cells away, which is its ``radius``.
    """

    kind: str = "deformable"
    kernel_size: int = 3
    max_offset: float = 1.0
    features: int | None = None
    bias: bool = True


class DeformablePerception(Perception):
    def __init__(self, channels: int, params: DeformableParams, padding: str, where: str) -> None:
        super().__init__()
        k = params.kernel_size
        require(k >= 1 and k % 2 == 1, f"{where}.kernel_size", k, "an odd integer >= 1")
        require(params.max_offset > 0, f"{where}.max_offset", params.max_offset, "a number > 0")
        features = params.features if params.features is not None else 3 * channels
        require(features > 0, f"{where}.features", features, "a positive integer")
        self.conv = nn.Conv2d(channels, features, k, bias=params.bias)
        self.offset = nn.Conv2d(channels, 2 * k * k, k)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.kernel_radius = (k - 1) // 2
        self.margin = math.ceil(params.max_offset)
        self.max_offset = params.max_offset
        self.padding = padding
        self.radius = self.kernel_radius + self.margin
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.ops import deform_conv2d

        h, w = x.shape[-2:]
        offset = self.max_offset * torch.tanh(self.offset(pad(x, self.kernel_radius, self.padding)))
        # The input padded by the full radius; outputs on its border (zero offsets there)
        # are computed and dropped, so the kept ones sample within ``radius`` of their cell.
        m = self.margin
        y = deform_conv2d(
            pad(x, self.radius, self.padding),
            F.pad(offset, (m,) * 4),
            self.conv.weight,
            self.conv.bias,
        )
        return y[..., m : m + h, m : m + w]
