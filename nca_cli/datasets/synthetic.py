"""Synthetic segmentation: random discs and blobs on textured noise.

Small enough to learn on a CPU in a minute, hard enough that a mask is not a threshold
of brightness: the colours overlap; shapes are striped and brighter on average.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _smooth_noise(n: int, channels: int, size: int, scale: int, g: torch.Generator) -> Tensor:
    coarse = torch.rand(n, channels, max(size // scale, 1), max(size // scale, 1), generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def make_shapes(n: int, size: int, seed: int, max_shapes: int = 3) -> tuple[Tensor, Tensor]:
    """``n`` RGB images ``(n, 3, size, size)`` in [0, 1] and binary masks ``(n, 1, ...)``.

    Sample ``i`` depends only on ``(seed, i)``, so a data set can grow without its first
    samples changing.
    """
    images, masks = [], []
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        mask = torch.zeros(size, size)
        for _ in range(int(torch.randint(1, max_shapes + 1, (1,), generator=g))):
            cx, cy = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
            r = 0.15 + 0.25 * float(torch.rand(1, generator=g))
            angle = torch.atan2(ys - cy, xs - cx)
            # A disc when the wobble is zero, a blob otherwise.
            wobble = 0.3 * float(torch.rand(1, generator=g))
            phase = 2 * math.pi * float(torch.rand(1, generator=g))
            k = int(torch.randint(2, 6, (1,), generator=g))
            radius = r * (1 + wobble * torch.sin(k * angle + phase))
            mask = torch.maximum(mask, (((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() < radius).float())
        base = _smooth_noise(1, 3, size, 8, g)[0]
        fine = torch.rand(1, size, size, generator=g)
        stripes = 0.5 + 0.5 * torch.sin(
            (xs * float(torch.randint(6, 12, (1,), generator=g)) + ys * 4) * math.pi
        )
        background = 0.5 * base + 0.3 * fine
        foreground = 0.3 * base + 0.3 * stripes + 0.4
        image = background * (1 - mask) + foreground * mask
        images.append(image.clamp(0, 1))
        masks.append(mask[None])
    return torch.stack(images), torch.stack(masks)
