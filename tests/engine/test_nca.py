"""The NCA step: the Distill model, stochastic firing, the alive mask, fixed channels,
rollouts and gradient checkpointing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA, build_nca
from nca_cli.engine.perception import (
    build_perception,
)
from nca_cli.engine.schema import ModelConfig

DILATED: dict[str, Any] = {
    "kind": "multi",
    "components": [
        {"kind": "conv", "kernel_size": 3},
        {"kind": "conv", "kernel_size": 5, "dilation": 2},
    ],
}


def set_constant_update(nca: NCA, bias: list[float]) -> None:
    """Make the update a constant ``bias`` per updated channel, whatever the features."""
    last = nca.update.layers[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))


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
