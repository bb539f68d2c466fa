"""Damage masks: which cells of a state to wipe, for regeneration training and evaluation.

Masks are ``(N, 1, H, W)`` floats, 1 where a cell survives and 0 where it is wiped. Shapes
are measured in cells, so a circle stays a circle on a non-square grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nca_cli.config import choice, require


@dataclass
class DamageConfig:
    """``circle``: a disc with centre offset drawn from ``center`` (fractions of half of
    each side, from the middle) and radius from ``radius`` (fractions of half the shorter
    side): the Distill recipe on a square grid. ``rect``: a rectangle whose sides are drawn
    from ``size`` (fractions of each side), placed uniformly inside the grid."""

    kind: str = "circle"
    count: int = 0
    radius: list[float] = field(default_factory=lambda: [0.1, 0.4])
    center: list[float] = field(default_factory=lambda: [-0.5, 0.5])
    size: list[float] = field(default_factory=lambda: [0.2, 0.5])


DAMAGE_KINDS = ("circle", "rect")


def _uniform(n: int, bounds: list[float], generator: torch.Generator | None) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def validate_damage(cfg: DamageConfig, where: str) -> None:
    choice(cfg.kind, list(DAMAGE_KINDS), f"{where}.kind")
    require(cfg.count >= 0, f"{where}.count", cfg.count, "an integer >= 0")
    for key in ("radius", "center", "size"):
        bounds = getattr(cfg, key)
        require(
            len(bounds) == 2 and bounds[0] <= bounds[1],
            f"{where}.{key}",
            bounds,
            "a range [low, high] with low <= high",
        )


def damage_mask(
    cfg: DamageConfig, n: int, height: int, width: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``n`` damage masks of the configured kind for an ``height`` x ``width`` grid."""
    ys = torch.linspace(-1.0, 1.0, height).view(1, height, 1)
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, width)
    if cfg.kind == "circle":
        cx = _uniform(n, cfg.center, generator).view(n, 1, 1)
        cy = _uniform(n, cfg.center, generator).view(n, 1, 1)
        r = _uniform(n, cfg.radius, generator).view(n, 1, 1)
        # Offsets in cells: half-extent of each axis; radius in half the shorter side.
        dx = (xs - cx) * (width - 1) / 2
        dy = (ys - cy) * (height - 1) / 2
        rr = r * (min(height, width) - 1) / 2
        hit = dx * dx + dy * dy < rr * rr
    else:
        hh = (_uniform(n, cfg.size, generator) * height).round().clamp(1, height)
        ww = (_uniform(n, cfg.size, generator) * width).round().clamp(1, width)
        top = (torch.rand(n, generator=generator) * (height - hh + 1)).floor()
        left = (torch.rand(n, generator=generator) * (width - ww + 1)).floor()
        rows = torch.arange(height).view(1, height, 1)
        cols = torch.arange(width).view(1, 1, width)
        t, lf = top.view(n, 1, 1), left.view(n, 1, 1)
        hit = (rows >= t) & (rows < t + hh.view(n, 1, 1))
        hit = hit & (cols >= lf) & (cols < lf + ww.view(n, 1, 1))
    return (~hit).float().unsqueeze(1)
