"""Damage masks: which cells of a state to wipe, for regeneration training and evaluation.

Masks are ``(N, 1, H, W)`` floats, 1 where a cell survives and 0 where it is wiped. Shapes
are measured in cells, so a circle stays a circle on a non-square grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from nca_cli.config import choice, require
from nca_cli.engine.schema import DAMAGE_KINDS


@dataclass
class DamageConfig:
    """``circle``: a disc with centre offset drawn from ``center`` (fractions of half of
    each side, from the middle; ``center_y``, when set, is the range of the vertical offset)
    and radius from ``radius`` (fractions of half the shorter side): the Distill recipe on a
    square grid. ``rect``: a rectangle whose sides are drawn from ``size`` (fractions of
    each side), placed uniformly inside the grid. ``half``: the ``side`` half of the grid
    (left, right, top, bottom, or one of them at random per sample): the review paper's 50%
    removal. ``noise``: every cell wiped independently with a probability drawn from
    ``rate`` per sample."""

    kind: str = "circle"
    count: int = 0
    radius: list[float] = field(default_factory=lambda: [0.1, 0.4])
    center: list[float] = field(default_factory=lambda: [-0.5, 0.5])
    size: list[float] = field(default_factory=lambda: [0.2, 0.5])
    center_y: list[float] | None = None
    side: str = "left"
    rate: list[float] = field(default_factory=lambda: [0.5, 0.5])

    def ignored(self) -> dict[str, str]:
        """With ``count`` 0 all but the count; otherwise the other kinds' shape options."""
        if self.count == 0:
            why = "damage.count is 0: nothing is damaged"
            return {f.name: why for f in fields(self) if f.name != "count"}
        reads = {"circle": ("radius", "center", "center_y"), "rect": ("size",), "half": ("side",)}
        kept = reads.get(self.kind, ("rate",))
        why = f"damage kind {self.kind!r} reads only " + ", ".join(kept)
        shapes = ("radius", "center", "size", "center_y", "side", "rate")
        return {key: why for key in shapes if key not in kept}


HALF_SIDES = ("left", "right", "top", "bottom")


def _uniform(
    n: int, bounds: list[float], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def validate_damage(cfg: DamageConfig, where: str) -> None:
    choice(cfg.kind, list(DAMAGE_KINDS), f"{where}.kind")
    require(cfg.count >= 0, f"{where}.count", cfg.count, "an integer >= 0")
    for key in ("radius", "center", "size", "center_y", "rate"):
        bounds = getattr(cfg, key)
        if bounds is None:
            continue
        require(
            len(bounds) == 2 and bounds[0] <= bounds[1],
            f"{where}.{key}",
            bounds,
            "a range [low, high] with low <= high",
        )
    require(
        cfg.rate[0] >= 0.0 and cfg.rate[1] <= 1.0,
        f"{where}.rate",
        cfg.rate,
        "probabilities in [0, 1]",
    )
    choice(cfg.side, [*HALF_SIDES, "random"], f"{where}.side")


def _half(
    cfg: DamageConfig,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Wipe exactly ``width // 2`` columns or ``height // 2`` rows from the chosen side."""
    rows = torch.arange(height, device=device).view(height, 1).expand(height, width)
    cols = torch.arange(width, device=device).view(1, width).expand(height, width)
    regions = torch.stack(  # in the order of HALF_SIDES
        [
            cols < width // 2,
            cols >= width - width // 2,
            rows < height // 2,
            rows >= height - height // 2,
        ]
    )
    if cfg.side == "random":
        sides = torch.randint(len(HALF_SIDES), (n,), generator=generator, device=device)
        return regions[sides]
    return regions[HALF_SIDES.index(cfg.side)].expand(n, height, width)


def damage_mask(
    cfg: DamageConfig,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``n`` damage masks of the configured kind for an ``height`` x ``width`` grid,
    where ``generator`` draws (or on ``device``, the CPU by default, without one): drawn on
    an accelerator, they need no copy from the host."""
    where = torch.device(device or "cpu") if generator is None else generator.device
    ys = torch.linspace(-1.0, 1.0, height, device=where).view(1, height, 1)
    xs = torch.linspace(-1.0, 1.0, width, device=where).view(1, 1, width)
    if cfg.kind == "circle":
        cx = _uniform(n, cfg.center, generator, where).view(n, 1, 1)
        cy = _uniform(n, cfg.center_y or cfg.center, generator, where).view(n, 1, 1)
        r = _uniform(n, cfg.radius, generator, where).view(n, 1, 1)
        # Offsets in cells: half-extent of each axis; radius in half the shorter side.
        dx = (xs - cx) * (width - 1) / 2
        dy = (ys - cy) * (height - 1) / 2
        rr = r * (min(height, width) - 1) / 2
        hit = dx * dx + dy * dy < rr * rr
    elif cfg.kind == "half":
        hit = _half(cfg, n, height, width, generator, where)
    elif cfg.kind == "noise":
        p = _uniform(n, cfg.rate, generator, where).view(n, 1, 1)
        hit = torch.rand(n, height, width, generator=generator, device=where) < p
    else:
        hh = (_uniform(n, cfg.size, generator, where) * height).round().clamp(1, height)
        ww = (_uniform(n, cfg.size, generator, where) * width).round().clamp(1, width)
        top = (torch.rand(n, generator=generator, device=where) * (height - hh + 1)).floor()
        left = (torch.rand(n, generator=generator, device=where) * (width - ww + 1)).floor()
        rows = torch.arange(height, device=where).view(1, height, 1)
        cols = torch.arange(width, device=where).view(1, 1, width)
        t, lf = top.view(n, 1, 1), left.view(n, 1, 1)
        hit = (rows >= t) & (rows < t + hh.view(n, 1, 1))
        hit = hit & (cols >= lf) & (cols < lf + ww.view(n, 1, 1))
    return (~hit).float().unsqueeze(1)
