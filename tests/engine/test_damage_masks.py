"""Damage masks: areas and shapes on square and non-square grids, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from nca_cli.engine.damage import DamageConfig, damage_mask


def hit_extent(mask: Tensor) -> tuple[int, int]:
    """Rows and columns spanned by the wiped (zero) cells of a (H, W) mask."""
    hit = mask == 0
    return int(hit.any(dim=1).sum()), int(hit.any(dim=0).sum())


def test_circle_damage_area_on_square_grid() -> None:
    cfg = DamageConfig(kind="circle", radius=[0.25, 0.25], center=[0.0, 0.0])
    mask = damage_mask(cfg, 3, 64, 64, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 64, 64)
    area = math.pi * (0.25 * 31.5) ** 2
    for m in mask[:, 0]:
        wiped = int((m == 0).sum())
        assert abs(wiped - area) / area < 0.05, wiped
        rows, cols = hit_extent(m)
        assert rows == cols
        # Centred: the disc is symmetric about the middle of the grid.
        assert torch.equal(m, m.flip(0))
        assert torch.equal(m, m.flip(1))


def test_circle_damage_is_a_disc_on_non_square_grid() -> None:
    cfg = DamageConfig(kind="circle", radius=[0.25, 0.25], center=[0.0, 0.0])
    area = math.pi * (0.25 * 19.5) ** 2  # radius: a fraction of half the shorter side
    for height, width in [(40, 80), (80, 40)]:
        m = damage_mask(cfg, 1, height, width)[0, 0]
        rows, cols = hit_extent(m)
        assert rows > 4
        assert abs(rows - cols) <= 1
        assert abs(int((m == 0).sum()) - area) / area < 0.1
    # Off-centre discs too (centre drawn per axis), still round.
    off = DamageConfig(kind="circle", radius=[0.3, 0.3], center=[-0.5, 0.5])
    for m in damage_mask(off, 8, 40, 80, torch.Generator().manual_seed(1))[:, 0]:
        rows, cols = hit_extent(m)
        assert abs(rows - cols) <= 1


def test_rect_damage_size() -> None:
    cfg = DamageConfig(kind="rect", size=[0.5, 0.5])
    masks = damage_mask(cfg, 6, 40, 80, torch.Generator().manual_seed(2))
    assert masks.shape == (6, 1, 40, 80)
    for m in masks[:, 0]:
        hit = m == 0
        assert int(hit.sum()) == 20 * 40
        assert hit_extent(m) == (20, 40)
    lefts = {int((m[0] == 0).any(dim=0).nonzero()[0]) for m in masks}
    assert len(lefts) > 1  # placed at random


@pytest.mark.parametrize("kind", ["circle", "rect"])
def test_damage_masks_are_binary_and_reproducible(kind: str) -> None:
    cfg = DamageConfig(kind=kind)
    a = damage_mask(cfg, 5, 32, 48, torch.Generator().manual_seed(3))
    b = damage_mask(cfg, 5, 32, 48, torch.Generator().manual_seed(3))
    c = damage_mask(cfg, 5, 32, 48, torch.Generator().manual_seed(4))
    assert a.shape == (5, 1, 32, 48)
    assert a.dtype == torch.float32
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool(((a == 0).flatten(1).any(dim=1)).all())  # every mask wipes something


@pytest.mark.parametrize(
    "cfg",
    [
        DamageConfig(kind="circle"),
        DamageConfig(kind="rect"),
        DamageConfig(kind="half", side="random"),
        DamageConfig(kind="half", side="top"),
        DamageConfig(kind="noise"),
    ],
    ids=lambda c: f"{c.kind}-{c.side}",
)
def test_masks_are_drawn_on_the_device_asked_for(cfg: DamageConfig) -> None:
    # 'meta' stands in for an accelerator: nothing may be made on the CPU and copied over.
    mask = damage_mask(cfg, 3, 16, 24, device="meta")
    assert mask.device.type == "meta" and mask.shape == (3, 1, 16, 24)
    on_cpu = damage_mask(cfg, 3, 16, 24, torch.Generator().manual_seed(0))
    assert on_cpu.device.type == "cpu"
