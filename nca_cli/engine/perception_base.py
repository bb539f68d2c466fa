"""The perception base class and the grid helpers that every perception module needs.

Apart from :mod:`nca_cli.engine.perception` (the registry), so that the modules defining
perceptions import these without importing each other.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.errors import ConfigError


def pad(x: Tensor, radius: int, mode: str) -> Tensor:
    """Pad the two spatial dimensions by ``radius`` cells with the configured ``mode``."""
    if radius == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (radius,) * 4)
    h, w = x.shape[-2:]
    if mode in ("circular", "reflect") and radius > min(h, w) - (mode == "reflect"):
        raise ConfigError(
            f"invalid value for 'model.padding': {mode!r}; the perception sees {radius} cells "
            f"away, more than the {h}x{w} grid can wrap or mirror: use a larger grid "
            "(dataset.size, dataset.padding), a shorter reach, or model.padding=zeros"
        )
    return F.pad(x, (radius,) * 4, mode=mode)


def rows(t: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` tensor as ``(B*H*W, C)`` rows, a view when it is channels-last."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class Perception(nn.Module):
    """Base class: ``out_features`` features per cell, ``radius`` cells of reach."""

    out_features: int
    radius: int

    def at_cells(self, x: Tensor, cells: Tensor) -> Tensor | None:
        """The features of ``x`` at the flat cells ``cells`` (``(b * H + y) * W + x``) as
        ``(n, out_features)`` rows, or None where only the whole grid is computed. The
        fused step perceives only the cells whose update it uses, when they are few."""
        return None
