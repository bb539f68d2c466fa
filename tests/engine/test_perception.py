"""Perceptions: the Sobel filters against hand-written kernels, learned and dilated
convolutions, the registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import ConfigError
from nca_cli.engine.perception import (
    ConvPerception,
    MultiPerception,
    Perception,
    SobelPerception,
    build_perception,
)

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


def interior(t: Tensor, r: int = 1) -> Tensor:
    return t[..., r:-r, r:-r]


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
