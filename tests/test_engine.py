"""Unit tests for the NCA engine: layout, perception, update, rollout, pool and damage."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import ConfigError
from nca_cli.engine.damage import DamageConfig, damage_mask
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA, build_nca
from nca_cli.engine.perception import (
    ConvPerception,
    MultiPerception,
    Perception,
    SobelPerception,
    build_perception,
)
from nca_cli.engine.pool import Batch, PoolConfig, SamplePool, renew, validate_pool
from nca_cli.engine.schema import ModelConfig

# Plain numbers, written out independently of the engine's own constants.
SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
SOBEL_Y = [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]
LAPLACE = [[1.0, 2.0, 1.0], [2.0, -12.0, 2.0], [1.0, 2.0, 1.0]]

DILATED: dict[str, Any] = {
    "kind": "multi",
    "components": [
        {"kind": "conv", "kernel_size": 3},
        {"kind": "conv", "kernel_size": 5, "dilation": 2},
    ],
}


def ramp(channels: int, height: int, width: int, axis: str) -> Tensor:
    """A (1, C, H, W) state with x[c, i, j] = j (axis 'x') or i (axis 'y')."""
    if axis == "x":
        line = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    else:
        line = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    return line.expand(1, channels, height, width).clone()


def correlate3(x: Tensor, kernel: list[list[float]], padding: str) -> Tensor:
    """Reference 3x3 cross-correlation of every channel, by explicit shifted sums.

    ``padding`` is 'zeros' or 'circular'; the circular border is built with torch.cat.
    """
    if padding == "zeros":
        xp = F.pad(x, (1, 1, 1, 1))
    else:
        xp = torch.cat([x[..., -1:, :], x, x[..., :1, :]], dim=-2)
        xp = torch.cat([xp[..., -1:], xp, xp[..., :1]], dim=-1)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for a in range(3):
        for b in range(3):
            out = out + kernel[a][b] * xp[..., a : a + h, b : b + w]
    return out


def rotated(angle: float) -> tuple[list[list[float]], list[list[float]]]:
    """The rotated Sobel pair: dx = cos Sx - sin Sy, dy = sin Sx + cos Sy (unscaled)."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dx = [[c * SOBEL_X[i][j] - s * SOBEL_Y[i][j] for j in range(3)] for i in range(3)]
    dy = [[s * SOBEL_X[i][j] + c * SOBEL_Y[i][j] for j in range(3)] for i in range(3)]
    return dx, dy


def sobel(channels: int, padding: str = "zeros", **params: Any) -> Perception:
    return build_perception({"kind": "sobel", **params}, channels, padding)


def set_constant_update(nca: NCA, bias: list[float]) -> None:
    """Make the update a constant ``bias`` per updated channel, whatever the features."""
    last = nca.update.layers[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))


def interior(t: Tensor, r: int = 1) -> Tensor:
    return t[..., r:-r, r:-r]


# --------------------------------------------------------------------------------------
# 1. Sobel perception
# --------------------------------------------------------------------------------------


def test_sobel_horizontal_ramp_features() -> None:
    p = sobel(3)
    x = ramp(3, 8, 10, "x")
    y = p(x)
    assert p.out_features == 9
    assert y.shape == (1, 9, 8, 10)
    cols = torch.arange(10, dtype=torch.float32).expand(8, 10)
    for c in range(3):
        torch.testing.assert_close(y[0, 3 * c], cols)  # identity, everywhere
        torch.testing.assert_close(interior(y[0, 3 * c + 1]), torch.ones(6, 8))  # dx
        torch.testing.assert_close(interior(y[0, 3 * c + 2]), torch.zeros(6, 8))  # dy


def test_sobel_vertical_ramp_features() -> None:
    p = sobel(2)
    y = p(ramp(2, 9, 7, "y"))
    for c in range(2):
        torch.testing.assert_close(interior(y[0, 3 * c + 1]), torch.zeros(7, 5))
        torch.testing.assert_close(interior(y[0, 3 * c + 2]), torch.ones(7, 5))


def test_sobel_features_are_interleaved_per_channel() -> None:
    # Channel c is a horizontal ramp of slope c + 1 plus a vertical ramp of slope 10 (c + 1).
    channels = 4
    slopes = torch.arange(1, channels + 1, dtype=torch.float32).view(1, channels, 1, 1)
    x = slopes * ramp(channels, 8, 8, "x") + 10 * slopes * ramp(channels, 8, 8, "y")
    y = sobel(channels)(x)
    for c in range(channels):
        torch.testing.assert_close(y[0, 3 * c], x[0, c])
        torch.testing.assert_close(interior(y[0, 3 * c + 1]), torch.full((6, 6), c + 1.0))
        torch.testing.assert_close(interior(y[0, 3 * c + 2]), torch.full((6, 6), 10.0 * (c + 1)))


def test_sobel_laplacian_adds_a_fourth_feature() -> None:
    p = sobel(3, laplacian=True)
    assert p.out_features == 12
    x = ramp(3, 8, 8, "x") + 2 * ramp(3, 8, 8, "y")
    y = p(x)
    assert y.shape == (1, 12, 8, 8)
    for c in range(3):
        torch.testing.assert_close(y[0, 4 * c], x[0, c])
        torch.testing.assert_close(interior(y[0, 4 * c + 1]), torch.ones(6, 6))
        torch.testing.assert_close(interior(y[0, 4 * c + 2]), torch.full((6, 6), 2.0))
        torch.testing.assert_close(interior(y[0, 4 * c + 3]), torch.zeros(6, 6))
    # The Laplacian is not zero on a non-linear field: x^2 has a constant second derivative.
    q = ramp(1, 8, 8, "x") ** 2
    yq = sobel(1, laplacian=True)(q)
    # Column sums of the kernel are (4, -8, 4)/16: (4 (j-1)^2 - 8 j^2 + 4 (j+1)^2) / 16 = 0.5.
    torch.testing.assert_close(interior(yq[0, 3]), torch.full((6, 6), 0.5))


def test_sobel_matches_reference_on_random_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9)
    for padding in ("zeros", "circular"):
        y = sobel(3, padding, laplacian=True)(x)
        dx, dy = rotated(0.0)
        for c in range(3):
            xc = x[:, c]
            torch.testing.assert_close(y[:, 4 * c], xc)
            torch.testing.assert_close(y[:, 4 * c + 1], correlate3(xc, dx, padding) / 8)
            torch.testing.assert_close(y[:, 4 * c + 2], correlate3(xc, dy, padding) / 8)
            torch.testing.assert_close(y[:, 4 * c + 3], correlate3(xc, LAPLACE, padding) / 16)


def test_sobel_rotation_by_90_degrees_maps_dx_to_dy() -> None:
    p = sobel(1, angle=90.0)
    # Horizontal ramp: unrotated dx = 1, dy = 0; rotated by 90 the gradient shows up in dy.
    y = p(ramp(1, 8, 8, "x"))
    torch.testing.assert_close(interior(y[0, 1]), torch.zeros(6, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(interior(y[0, 2]), torch.ones(6, 6))
    # Vertical ramp: dx = cos*0 - sin*1 = -1, dy = sin*0 + cos*1 = 0.
    y = p(ramp(1, 8, 8, "y"))
    torch.testing.assert_close(interior(y[0, 1]), -torch.ones(6, 6))
    torch.testing.assert_close(interior(y[0, 2]), torch.zeros(6, 6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle", [30.0, 90.0, -45.0])
def test_sobel_rotation_matches_formula(angle: float) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 2, 6, 6)
    y = sobel(2, angle=angle)(x)
    dx, dy = rotated(angle)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for ch in range(2):
        torch.testing.assert_close(y[:, 3 * ch + 1], correlate3(x[:, ch], dx, "zeros") / 8)
        torch.testing.assert_close(y[:, 3 * ch + 2], correlate3(x[:, ch], dy, "zeros") / 8)
    # On a horizontal ramp the rotated features are (cos, sin) in the interior.
    r = sobel(1, angle=angle)(ramp(1, 6, 6, "x"))
    torch.testing.assert_close(interior(r[0, 1]), torch.full((4, 4), c))
    torch.testing.assert_close(interior(r[0, 2]), torch.full((4, 4), s))


def test_sobel_circular_padding_wraps_around() -> None:
    width = 10
    x = ramp(1, 6, width, "x")
    zeros = sobel(1, "zeros")(x)
    circular = sobel(1, "circular")(x)
    # Interior columns agree (rows wrap, but every row is the same ramp).
    torch.testing.assert_close(circular[0, 1, :, 1:-1], torch.ones(6, width - 2))
    torch.testing.assert_close(zeros[0, 1, 1:-1, 1:-1], circular[0, 1, 1:-1, 1:-1])
    # Left column: neighbours j = 1 and j = W-1 (wrapped) vs j = 1 and 0 (zero padding).
    torch.testing.assert_close(circular[0, 1, :, 0], torch.full((6,), (1 - (width - 1)) / 2))
    torch.testing.assert_close(zeros[0, 1, 1:-1, 0], torch.full((4,), 0.5))
    # Right column: neighbours j = W-2 and 0 (wrapped).
    torch.testing.assert_close(circular[0, 1, :, -1], torch.full((6,), (0 - (width - 2)) / 2))
    # With circular padding there are no vertical edges at the top and bottom rows.
    torch.testing.assert_close(circular[0, 2], torch.zeros(6, width))
    assert not torch.allclose(zeros[0, 2, 0], torch.zeros(width))


def test_sobel_filters_are_buffers_not_parameters() -> None:
    p = sobel(16, laplacian=True)
    assert isinstance(p, SobelPerception)
    assert sum(t.numel() for t in p.parameters()) == 0
    buffers = dict(p.named_buffers())
    assert "kernel" in buffers
    assert buffers["kernel"].shape == (64, 1, 3, 3)
    assert p.radius == 1


# --------------------------------------------------------------------------------------
# 2. Learned convolution perceptions and the registry
# --------------------------------------------------------------------------------------


def test_conv_perception_feature_counts() -> None:
    p = build_perception({"kind": "conv"}, 5, "zeros")
    assert isinstance(p, ConvPerception)
    assert p.out_features == 15
    assert p(torch.randn(2, 5, 6, 7)).shape == (2, 15, 6, 7)
    q = build_perception({"kind": "conv", "features": 7}, 5, "zeros")
    assert q.out_features == 7
    assert q(torch.randn(1, 5, 4, 4)).shape == (1, 7, 4, 4)
    dw = build_perception({"kind": "conv", "features": 10, "depthwise": True}, 5, "zeros")
    assert dw.out_features == 10
    assert isinstance(dw, ConvPerception)
    assert dw.conv.groups == 5
    assert sum(t.numel() for t in dw.parameters()) == 10 * 1 * 3 * 3 + 10
    res = build_perception({"kind": "residual", "kernel_size": 5}, 4, "zeros")
    assert res.out_features == 4 + 12
    assert res.radius == 2
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(res(x)[:, :4], x)


def test_conv_depthwise_needs_a_multiple_of_channels() -> None:
    with pytest.raises(ConfigError, match=r"perception\.features"):
        build_perception({"kind": "conv", "features": 10, "depthwise": True}, 4, "zeros")


@pytest.mark.parametrize("k", [2, 4, 0])
def test_conv_even_kernel_size_is_rejected(k: int) -> None:
    with pytest.raises(ConfigError, match=r"perception\.kernel_size"):
        build_perception({"kind": "conv", "kernel_size": k}, 4, "zeros")


def test_conv_bad_dilation_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"perception\.dilation"):
        build_perception({"kind": "conv", "dilation": 0}, 4, "zeros")


def test_dilated_multi_perception() -> None:
    p = build_perception(DILATED, 16, "zeros")
    assert isinstance(p, MultiPerception)
    assert p.out_features == 48 + 48
    assert p.radius == 4
    assert p(torch.randn(1, 16, 9, 9)).shape == (1, 96, 9, 9)


@pytest.mark.parametrize(
    ("cfg", "radius"),
    [
        ({"kind": "sobel"}, 1),
        ({"kind": "conv", "kernel_size": 3}, 1),
        ({"kind": "conv", "kernel_size": 5}, 2),
        ({"kind": "conv", "kernel_size": 3, "dilation": 3}, 3),
        ({"kind": "residual", "kernel_size": 7}, 3),
        (DILATED, 4),
    ],
)
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_receptive_field_is_radius(cfg: dict[str, Any], radius: int, padding: str) -> None:
    torch.manual_seed(2)
    channels, size, centre = 3, 21, 10
    p = build_perception(cfg, channels, padding)
    assert p.radius == radius
    x = torch.randn(1, channels, size, size)
    base = p(x)[0, :, centre, centre]

    def changed(di: int, dj: int) -> bool:
        y = x.clone()
        y[0, :, centre + di, centre + dj] += 5.0
        return not torch.allclose(p(y)[0, :, centre, centre], base)

    for di, dj in [(radius + 1, 0), (0, radius + 1), (-radius - 1, radius), (radius + 1,) * 2]:
        assert not changed(di, dj), (di, dj)
    for di, dj in [(radius, radius), (-radius, 0), (0, -radius), (0, 0)]:
        assert changed(di, dj), (di, dj)


@pytest.mark.parametrize("cfg", [{"kind": "conv", "kernel_size": 5}, DILATED])
def test_padding_only_changes_border_cells(cfg: dict[str, Any]) -> None:
    torch.manual_seed(3)
    zeros = build_perception(cfg, 2, "zeros")
    circular = build_perception(cfg, 2, "circular")
    circular.load_state_dict(zeros.state_dict())
    x = torch.randn(1, 2, 14, 14)
    a, b = zeros(x), circular(x)
    r = zeros.radius
    torch.testing.assert_close(interior(a, r), interior(b, r))
    assert not torch.allclose(a[..., 0, :], b[..., 0, :])


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"perception\.kind.*'nope'"):
        build_perception({"kind": "nope"}, 4, "zeros")
    with pytest.raises(ConfigError, match=r"perception\.kind"):
        build_perception({}, 4, "zeros")


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"'perception\.foo'"):
        build_perception({"kind": "sobel", "foo": 1}, 4, "zeros")
    with pytest.raises(ConfigError, match=r"'perception\.bar'"):
        build_perception({"kind": "conv", "bar": 1}, 4, "zeros")
    bad = {"kind": "multi", "components": [{"kind": "conv"}, {"kind": "conv", "baz": 2}]}
    with pytest.raises(ConfigError, match=r"'perception\.components\[1\]\.baz'"):
        build_perception(bad, 4, "zeros")
    with pytest.raises(ConfigError, match=r"perception\.components"):
        build_perception({"kind": "multi"}, 4, "zeros")


# --------------------------------------------------------------------------------------
# 3. The Distill model
# --------------------------------------------------------------------------------------


def test_distill_model_parameter_count_and_identity_start() -> None:
    nca = build_nca(ModelConfig(), {"kind": "sobel"}, ChannelLayout(16), alive_channel=3)
    assert sum(p.numel() for p in nca.parameters()) == 8336
    assert nca.alive_channel == 3
    assert nca.fire_rate == 0.5
    last = nca.update.layers[-1]
    assert isinstance(last, torch.nn.Linear)
    assert torch.count_nonzero(last.weight) == 0
    assert torch.count_nonzero(last.bias) == 0
    assert torch.count_nonzero(nca.update.layers[0].weight) > 0
    torch.manual_seed(4)
    x = torch.rand(2, 16, 12, 12)
    x[:, 3] = 0.5 + 0.5 * x[:, 3]  # every cell alive
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y, _ = nca.rollout(x, 3, gen)
    torch.testing.assert_close(y, x, rtol=0, atol=0)


def test_build_nca_without_alive_mask() -> None:
    cfg = ModelConfig(alive_mask=False, hidden=[32, 16], fire_rate=1.0)
    nca = build_nca(cfg, {"kind": "sobel"}, ChannelLayout(16), alive_channel=3)
    assert nca.alive_channel is None
    # 48*32+32 + 32*16+16 + 16*16+16
    assert sum(p.numel() for p in nca.parameters()) == 1568 + 528 + 272


# --------------------------------------------------------------------------------------
# 4. Stochastic firing
# --------------------------------------------------------------------------------------


def small_nca(
    layout: ChannelLayout,
    fire_rate: float = 1.0,
    alive_channel: int | None = None,
    perception: dict[str, Any] | None = None,
    hidden: int = 8,
    zero_init: bool = True,
    update_noise: float = 0.0,
) -> NCA:
    p = build_perception(perception or {"kind": "sobel"}, layout.channels, "zeros")
    return NCA(
        layout,
        p,
        hidden=[hidden],
        fire_rate=fire_rate,
        alive_channel=alive_channel,
        zero_init=zero_init,
        update_noise=update_noise,
    )


def test_fire_mask_statistics() -> None:
    nca = small_nca(ChannelLayout(8), fire_rate=0.5)
    x = torch.zeros(4, 8, 64, 64)
    noise = nca.draw_noise(x, 4, torch.Generator().manual_seed(0))
    assert noise.fire is not None
    assert noise.update is None
    assert noise.fire.shape == (4, 4, 1, 64, 64)
    assert set(noise.fire.unique().tolist()) <= {0.0, 1.0}
    assert abs(noise.fire.mean().item() - 0.5) < 0.01
    # Each step and each sample has its own mask.
    assert not torch.equal(noise.fire[0], noise.fire[1])
    assert not torch.equal(noise.fire[0, 0], noise.fire[0, 1])

    low = small_nca(ChannelLayout(8), fire_rate=0.2)
    fire = low.draw_noise(x, 4, torch.Generator().manual_seed(0)).fire
    assert fire is not None
    assert abs(fire.mean().item() - 0.2) < 0.01


def test_fire_rate_one_fires_everywhere() -> None:
    nca = small_nca(ChannelLayout(8), fire_rate=1.0)
    noise = nca.draw_noise(torch.zeros(2, 8, 8, 8), 3, torch.Generator().manual_seed(0))
    assert noise.fire is None


def test_fire_masks_are_reproducible() -> None:
    nca = small_nca(ChannelLayout(8), fire_rate=0.5, update_noise=0.1)
    x = torch.zeros(2, 8, 16, 16)
    a = nca.draw_noise(x, 3, torch.Generator().manual_seed(7))
    b = nca.draw_noise(x, 3, torch.Generator().manual_seed(7))
    c = nca.draw_noise(x, 3, torch.Generator().manual_seed(8))
    assert a.fire is not None and b.fire is not None and c.fire is not None
    assert a.update is not None and b.update is not None and c.update is not None
    assert torch.equal(a.fire, b.fire)
    assert torch.equal(a.update, b.update)
    assert not torch.equal(a.fire, c.fire)
    assert a.update.shape == (3, 2, 8, 16, 16)
    assert abs(a.update.std().item() - 0.1) < 0.01


def test_fire_mask_applies_to_every_channel() -> None:
    layout = ChannelLayout(6, visible=4, alpha=None)
    nca = small_nca(layout, fire_rate=0.5)
    bias = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    set_constant_update(nca, bias)
    torch.manual_seed(5)
    x = torch.randn(2, 6, 10, 10)
    fire = nca.draw_noise(x, 1, torch.Generator().manual_seed(1)).fire
    assert fire is not None
    with torch.no_grad():
        y = nca.step(x, fire[0])
    expected = x + torch.tensor(bias).view(1, 6, 1, 1) * fire[0]
    torch.testing.assert_close(y, expected)
    assert 0 < fire[0].sum() < fire[0].numel()


# --------------------------------------------------------------------------------------
# 5. Alive mask, before and after the update
# --------------------------------------------------------------------------------------


def test_alive_mask_keeps_dead_regions_dead() -> None:
    layout = ChannelLayout(4, visible=4, alpha=3)
    nca = small_nca(layout, fire_rate=1.0, alive_channel=3)
    set_constant_update(nca, [1.0, 0.0, 0.0, 0.5])  # brings every cell to life
    x = torch.zeros(1, 4, 12, 12)
    x[0, 3, 6, 6] = 1.0
    x[0, 1, 6, 6] = 2.0
    with torch.no_grad():
        y = nca.step(x)
    pre = torch.zeros(12, 12, dtype=torch.bool)
    pre[5:8, 5:8] = True
    # Cells not alive before the step stay zero even though alpha rose to 0.5 there.
    assert torch.count_nonzero(y[0][:, ~pre]) == 0
    # Cells alive before and after the step keep their updated value.
    expected = x[0] + torch.tensor([1.0, 0.0, 0.0, 0.5]).view(4, 1, 1)
    torch.testing.assert_close(y[0][:, pre], expected[:, pre])


def test_alive_mask_kills_cells_that_die() -> None:
    layout = ChannelLayout(4, visible=4, alpha=3)
    nca = small_nca(layout, fire_rate=1.0, alive_channel=3)
    set_constant_update(nca, [1.0, 0.0, 0.0, -1.0])
    x = torch.zeros(1, 4, 16, 16)
    x[0, 3, 3, 3] = 2.0  # survives: alpha 2 - 1 = 1
    x[0, 3, 12, 12] = 0.5  # dies: alpha 0.5 - 1 < threshold
    x[0, 2, 12, 12] = 3.0
    with torch.no_grad():
        y = nca.step(x)
    survivor = torch.zeros(16, 16, dtype=torch.bool)
    survivor[2:5, 2:5] = True
    expected = x[0] + torch.tensor([1.0, 0.0, 0.0, -1.0]).view(4, 1, 1)
    torch.testing.assert_close(y[0][:, survivor], expected[:, survivor])
    # The other cell was alive before the step but no cell near it is alive after.
    assert nca.alive(x)[0, 0, 12, 12]
    assert not nca.alive(expected[None])[0, 0, 12, 12]
    assert torch.count_nonzero(y[0][:, ~survivor]) == 0


def test_alive_mask_uses_absolute_alpha_and_spares_fixed_channels() -> None:
    layout = ChannelLayout(6, inputs=1, visible=4, alpha=3)
    assert layout.alpha_channel == 4
    nca = small_nca(layout, fire_rate=1.0, alive_channel=layout.alpha_channel)
    set_constant_update(nca, [0.5, 0.0, 0.0, 0.0, 0.0])
    x = torch.zeros(1, 6, 10, 10)
    x[0, 0] = 7.0  # input channel: large everywhere, but it is not the alpha channel
    x[0, 4, 2, 2] = 1.0
    with torch.no_grad():
        y = nca.step(x)
    torch.testing.assert_close(y[0, 0], x[0, 0])  # fixed channel is never masked
    alive = torch.zeros(10, 10, dtype=torch.bool)
    alive[1:4, 1:4] = True
    torch.testing.assert_close(y[0, 1][alive], torch.full((9,), 0.5))
    assert torch.count_nonzero(y[0, 1:][:, ~alive]) == 0


# --------------------------------------------------------------------------------------
# 6. Fixed channels
# --------------------------------------------------------------------------------------


def test_fixed_input_channels_are_never_written() -> None:
    layout = ChannelLayout(channels=8, inputs=2, visible=1, alpha=None)
    torch.manual_seed(6)
    nca = small_nca(layout, fire_rate=0.5, zero_init=False, hidden=16)
    assert nca.update.layers[-1].out_features == 6
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        y, _ = nca.rollout(x, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y[:, :2], x[:, :2], rtol=0, atol=0)
    for c in range(2, 8):
        assert not torch.allclose(y[:, c], x[:, c]), c


# --------------------------------------------------------------------------------------
# 7. Rollouts, trajectories and gradient checkpointing
# --------------------------------------------------------------------------------------


def seeded_state(batch: int, channels: int, size: int, alpha: int) -> Tensor:
    """Random state whose alpha channel is alive only in a central patch."""
    x = torch.rand(batch, channels, size, size)
    patch = torch.zeros(size, size)
    q = size // 4
    patch[q:-q, q:-q] = 1.0
    x[:, alpha] = x[:, alpha] * patch
    return x


def test_rollout_trajectory_matches_manual_steps() -> None:
    layout = ChannelLayout(8)
    torch.manual_seed(7)
    nca = small_nca(layout, fire_rate=0.5, alive_channel=3, zero_init=False, update_noise=0.01)
    x = seeded_state(2, 8, 12, 3)
    with torch.no_grad():
        y, states = nca.rollout(x, 7, torch.Generator().manual_seed(3), trajectory=True)
        assert len(states) == 7
        torch.testing.assert_close(states[-1], y)
        noise = nca.draw_noise(x, 7, torch.Generator().manual_seed(3))
        assert noise.fire is not None and noise.update is not None
        z = x
        for i in range(7):
            z = nca.step(z, noise.fire[i], noise.update[i])
            torch.testing.assert_close(states[i], z)
        _, none = nca.rollout(x, 7, torch.Generator().manual_seed(3))
        assert none == []
        # Checkpointing is off without gradients: still one state per step.
        _, per_step = nca.rollout(x, 7, torch.Generator().manual_seed(3), 4, trajectory=True)
        assert len(per_step) == 7
    # With gradients and checkpointing, one state per block (4 + 3 steps).
    _, per_block = nca.rollout(x, 7, torch.Generator().manual_seed(3), 4, trajectory=True)
    assert len(per_block) == 2
    torch.testing.assert_close(per_block[0], states[3])
    torch.testing.assert_close(per_block[1], states[6])
    assert not per_block[1].requires_grad


@pytest.mark.parametrize("perception", [{"kind": "sobel"}, DILATED], ids=["sobel", "dilated"])
def test_gradient_checkpointing_matches_plain_backprop(perception: dict[str, Any]) -> None:
    layout = ChannelLayout(8)
    torch.manual_seed(8)
    nca = small_nca(
        layout,
        fire_rate=0.5,
        alive_channel=3,
        perception=perception,
        hidden=16,
        zero_init=False,
    )
    x0 = seeded_state(2, 8, 14, 3)
    weights = torch.randn(2, 8, 14, 14)

    def run(every: int) -> tuple[Tensor, list[Tensor]]:
        nca.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        y, _ = nca.rollout(x, 10, torch.Generator().manual_seed(11), checkpoint_every=every)
        (y * weights).sum().backward()
        assert x.grad is not None
        grads = [p.grad.clone() for p in nca.parameters() if p.grad is not None]
        return y.detach(), [x.grad, *grads]

    y_plain, g_plain = run(0)
    y_ckpt, g_ckpt = run(4)
    torch.testing.assert_close(y_ckpt, y_plain, rtol=0, atol=1e-6)
    assert len(g_plain) == len(g_ckpt) == 1 + len(list(nca.parameters()))
    for a, b in zip(g_plain, g_ckpt, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # The rollout actually did something: not all cells alive, not the identity.
    assert not torch.allclose(y_plain, x0)
    assert torch.count_nonzero(y_plain[:, 3]) < y_plain[:, 3].numel()


# --------------------------------------------------------------------------------------
# 8. Damage masks
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# 9. Sample pool
# --------------------------------------------------------------------------------------


def test_pool_sample_returns_distinct_copies_and_commit_writes_back() -> None:
    torch.manual_seed(9)
    data = {"state": torch.randn(16, 4, 6, 6), "id": torch.arange(16)}
    pool = SamplePool({k: v.clone() for k, v in data.items()})
    assert pool.size == 16
    idx, batch = pool.sample(8, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 8
    assert torch.equal(batch["id"], idx)
    assert torch.equal(batch["state"], data["state"][idx])
    batch["state"] += 1.0
    batch["id"][:] = -1
    assert torch.equal(pool.data["state"], data["state"])
    assert torch.equal(pool.data["id"], data["id"])
    pool.commit(idx, batch)
    assert torch.equal(pool.data["state"][idx], data["state"][idx] + 1.0)
    assert bool((pool.data["id"][idx] == -1).all())
    rest = torch.ones(16, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(pool.data["state"][rest], data["state"][rest])
    idx2, _ = pool.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(idx, idx2)


LOSSES = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4])
BY_LOSS = [1, 6, 4, 3, 7, 0, 5, 2]  # indices ordered from worst (highest loss) to best


def ones_batch() -> Batch:
    return {"state": torch.ones(8, 5, 24, 24), "id": torch.arange(8)}


def fresh(n: int) -> Batch:
    return {"state": torch.zeros(n, 5, 24, 24), "id": torch.full((n,), -1)}


def no_mutation(batch: Batch) -> Batch:
    raise AssertionError("mutate must not be called when cfg.mutate == 0")


@pytest.mark.parametrize("wipe_from", [0, 2])
def test_renew_replaces_worst_and_damages_best(wipe_from: int) -> None:
    cfg = PoolConfig(size=16, replace=1, damage=DamageConfig(count=3))
    out = renew(
        ones_batch(), LOSSES, cfg, fresh, no_mutation, wipe_from, torch.Generator().manual_seed(0)
    )
    assert out["id"].tolist() == [-1, *BY_LOSS[1:]]
    assert torch.count_nonzero(out["state"][0]) == 0  # the fresh sample, not damaged
    for i in range(1, 5):
        assert bool((out["state"][i] == 1).all()), i
    for i in range(5, 8):
        s = out["state"][i]
        assert bool((s[:wipe_from] == 1).all())
        damaged = s[wipe_from:]
        assert bool((damaged == 0).any()) and bool((damaged == 1).any())
        assert set(damaged.unique().tolist()) == {0.0, 1.0}
        # One mask per sample, shared by every wiped channel.
        assert bool((damaged == damaged[:1]).all())


def test_renew_orders_by_loss_without_replacement() -> None:
    cfg = PoolConfig(size=16, replace=0, damage=DamageConfig(count=0))
    out = renew(ones_batch(), LOSSES, cfg, fresh, no_mutation, 0, None)
    assert out["id"].tolist() == BY_LOSS
    assert bool((out["state"] == 1).all())


def test_renew_hands_the_next_samples_to_mutation() -> None:
    seen: list[list[int]] = []

    def mutate(part: Batch) -> Batch:
        seen.append(part["id"].tolist())
        return {"state": part["state"] * 3, "id": part["id"] + 100}

    cfg = PoolConfig(size=16, replace=1, mutate=2, damage=DamageConfig(count=0))
    out = renew(ones_batch(), LOSSES, cfg, fresh, mutate, 0, None)
    assert seen == [BY_LOSS[1:3]]
    assert out["id"].tolist() == [-1, BY_LOSS[1] + 100, BY_LOSS[2] + 100, *BY_LOSS[3:]]
    assert bool((out["state"][1:3] == 3).all())
    assert bool((out["state"][3:] == 1).all())


def test_validate_pool() -> None:
    ok = PoolConfig(size=16, replace=4, mutate=1, damage=DamageConfig(count=3))
    validate_pool(ok, 8, "pool")
    validate_pool(PoolConfig(size=0, replace=100), 8, "pool")  # no pool: nothing to check
    too_many = PoolConfig(size=16, replace=4, mutate=2, damage=DamageConfig(count=3))
    with pytest.raises(ConfigError, match=r"pool\.replace"):
        validate_pool(too_many, 8, "pool")
    with pytest.raises(ConfigError, match=r"pool\.size"):
        validate_pool(PoolConfig(size=4), 8, "pool")
    with pytest.raises(ConfigError, match=r"pool\.damage\.kind"):
        validate_pool(PoolConfig(size=16, damage=DamageConfig(kind="star")), 8, "pool")


# --------------------------------------------------------------------------------------
# 10. Channel layout
# --------------------------------------------------------------------------------------


def test_layout_rejects_too_few_channels() -> None:
    with pytest.raises(ValueError, match=r"at least 4"):
        ChannelLayout(channels=3)
    with pytest.raises(ValueError, match=r"at least 9"):
        ChannelLayout(channels=8, inputs=3, conditions=2, visible=4)
    with pytest.raises(ValueError, match=r"alpha"):
        ChannelLayout(channels=8, visible=3, alpha=3)
    with pytest.raises(ValueError):
        ChannelLayout(channels=8, inputs=-1)


def test_layout_slices() -> None:
    layout = ChannelLayout(channels=16, inputs=2, conditions=3, visible=4, alpha=3)
    assert layout.fixed == 5
    assert layout.updated == 11
    assert layout.hidden == 7
    assert layout.input_slice == slice(0, 2)
    assert layout.condition_slice == slice(2, 5)
    assert layout.visible_slice == slice(5, 9)
    assert layout.hidden_slice == slice(9, 16)
    assert layout.alpha_channel == 8
    names = list(range(16))
    slices = (layout.input_slice, layout.condition_slice, layout.visible_slice)
    assert [i for s in (*slices, layout.hidden_slice) for i in names[s]] == names
    plain = ChannelLayout(16)
    assert plain.alpha_channel == 3
    assert plain.visible_slice == slice(0, 4)
    assert ChannelLayout(8, inputs=1, visible=2, alpha=None).alpha_channel is None


def test_circular_padding_wider_than_the_grid_names_the_padding() -> None:
    from nca_cli.engine.perception import pad

    assert pad(torch.zeros(1, 1, 16, 16), 16, "circular").shape[-1] == 48
    with pytest.raises(ConfigError, match=r"'model.padding': 'circular'.*20 cells.*16x16"):
        pad(torch.zeros(1, 1, 16, 16), 20, "circular")
