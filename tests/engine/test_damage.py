"""Damage kinds added for evaluation: half, noise, and circles centred per axis."""

from __future__ import annotations

import math

import pytest
import torch

from nca_cli.config import ConfigError
from nca_cli.engine.damage import DAMAGE_KINDS, DamageConfig, damage_mask, validate_damage
from nca_cli.engine.pool import PoolConfig, renew

GRIDS = [(32, 32), (40, 80), (80, 40), (41, 81), (72, 72)]


@pytest.mark.parametrize(("height", "width"), GRIDS)
def test_half_damage_wipes_exactly_half_the_columns_or_rows(height: int, width: int) -> None:
    rows, cols = torch.arange(height).view(-1, 1), torch.arange(width).view(1, -1)
    expected = {
        "left": (cols < width // 2).expand(height, width),
        "right": (cols >= width - width // 2).expand(height, width),
        "top": (rows < height // 2).expand(height, width),
        "bottom": (rows >= height - height // 2).expand(height, width),
    }
    for side, wiped in expected.items():
        mask = damage_mask(DamageConfig(kind="half", side=side), 3, height, width)
        assert mask.shape == (3, 1, height, width)
        for m in mask[:, 0]:
            assert torch.equal(m == 0, wiped), side
        whole = width if side in ("left", "right") else height
        lines = (mask[0, 0] == 0).all(dim=0 if side in ("left", "right") else 1).sum()
        assert int(lines) == whole // 2, side


def test_half_damage_random_side_draws_every_side() -> None:
    fixed = {
        side: damage_mask(DamageConfig(kind="half", side=side), 1, 20, 30)[0]
        for side in ("left", "right", "top", "bottom")
    }
    cfg = DamageConfig(kind="half", side="random")
    masks = damage_mask(cfg, 64, 20, 30, torch.Generator().manual_seed(0))
    drawn = [next(s for s, m in fixed.items() if torch.equal(m, mask)) for mask in masks]
    assert set(drawn) == set(fixed)


@pytest.mark.parametrize(("height", "width"), GRIDS)
def test_noise_damage_wipes_the_given_fraction_of_cells(height: int, width: int) -> None:
    g = torch.Generator().manual_seed(1)
    for rate in (0.0, 0.3, 1.0):
        masks = damage_mask(DamageConfig(kind="noise", rate=[rate, rate]), 8, height, width, g)
        assert masks.shape == (8, 1, height, width)
        fraction = float((masks == 0).float().mean())
        assert abs(fraction - rate) < 0.02, (rate, fraction)
        # Scattered, not a block: some wiped cells in each half of the grid.
        if 0 < rate < 1:
            assert (masks[..., : width // 2] == 0).any() and (masks[..., width // 2 :] == 0).any()
    drawn = damage_mask(DamageConfig(kind="noise", rate=[0.1, 0.9]), 32, 16, 16, g)
    per_sample = (drawn == 0).float().flatten(1).mean(1)
    assert per_sample.min() < 0.3 and per_sample.max() > 0.7  # the rate is drawn per sample


@pytest.mark.parametrize(("height", "width"), GRIDS)
def test_circle_centred_per_axis_covers_its_disc(height: int, width: int) -> None:
    cx, cy, r = 0.5, -0.25, 0.3
    cfg = DamageConfig(kind="circle", center=[cx, cx], center_y=[cy, cy], radius=[r, r])
    m = damage_mask(cfg, 1, height, width)[0, 0]
    hit = (m == 0).nonzero().float()
    # The centre of the wiped cells is where the offsets say (in fractions of half a side).
    centre_y = (height - 1) / 2 * (1 + cy)
    centre_x = (width - 1) / 2 * (1 + cx)
    assert abs(float(hit[:, 0].mean()) - centre_y) < 0.6
    assert abs(float(hit[:, 1].mean()) - centre_x) < 0.6
    radius = r * (min(height, width) - 1) / 2
    area = math.pi * radius**2
    assert abs(len(hit) - area) / area < 0.1
    # Without center_y both axes share `center` (the behaviour training relies on).
    same = DamageConfig(kind="circle", center=[cx, cx], radius=[r, r])
    hit = (damage_mask(same, 1, height, width)[0, 0] == 0).nonzero().float()
    assert abs(float(hit[:, 0].mean()) - (height - 1) / 2 * (1 + cx)) < 0.6


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_every_kind_is_binary_reproducible_and_validates(kind: str) -> None:
    cfg = DamageConfig(kind=kind, side="random", rate=[0.2, 0.6])
    validate_damage(cfg, "pool.damage")
    a = damage_mask(cfg, 6, 24, 40, torch.Generator().manual_seed(5))
    b = damage_mask(cfg, 6, 24, 40, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert bool(((a == 0).flatten(1).any(dim=1)).all())


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (DamageConfig(kind="half", side="middle"), "side"),
        (DamageConfig(kind="noise", rate=[0.2, 1.5]), "rate"),
        (DamageConfig(kind="noise", rate=[0.6, 0.2]), "rate"),
        (DamageConfig(kind="circle", center_y=[0.5, -0.5]), "center_y"),
        (DamageConfig(kind="star"), "kind"),
    ],
)
def test_bad_damage_settings_name_the_key(cfg: DamageConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pool\.damage\.{key}"):
        validate_damage(cfg, "pool.damage")


def test_pool_damages_with_the_new_kinds_and_keeps_fixed_channels() -> None:
    cfg = PoolConfig(size=8, replace=0, damage=DamageConfig(kind="half", count=2, side="left"))
    batch = {"state": torch.ones(4, 6, 10, 12)}
    out = renew(batch, torch.arange(4.0), cfg, lambda n: {}, lambda b: b, 2, None)
    damaged = out["state"][-2:]
    assert bool((damaged[:, :2] == 1).all())  # fixed input channels survive
    assert bool((damaged[:, 2:, :, :6] == 0).all()) and bool((damaged[:, 2:, :, 6:] == 1).all())
    assert bool((out["state"][:2] == 1).all())
