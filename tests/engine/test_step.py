"""The step that training runs (``NCA.step``, ``NCA.rollout``) is the reference step: the
same states and gradients for any model the config can build, and the reference step
itself where the fused step does not implement an option."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from nca_cli.engine.fused import PADDINGS, supports
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA, build_nca
from nca_cli.engine.perception import ConvPerception, build_perception
from nca_cli.engine.perception_base import Perception
from nca_cli.engine.schema import ModelConfig
from nca_cli.engine.update import ACTIVATIONS

FALLBACK = "the fused step does not implement {}: using the reference step"


@st.composite
def conv_options(draw: st.DrawFn, channels: int) -> dict[str, Any]:
    depthwise = draw(st.booleans())
    multiples = [channels, 2 * channels] if depthwise else [None, 6]
    return {
        "kernel_size": draw(st.sampled_from([1, 3, 5])),
        "dilation": draw(st.sampled_from([1, 2])),
        "depthwise": depthwise,
        "features": draw(st.sampled_from(multiples)),
        "bias": draw(st.booleans()),
        "activation": draw(st.sampled_from([None, "relu", "tanh"])),
    }


def perceptions(channels: int, nested: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Every perception kind with its options."""
    sobel = st.fixed_dictionaries(
        {"laplacian": st.booleans(), "angle": st.sampled_from([0.0, 30.0])}
    ).map(lambda o: {"kind": "sobel", **o})
    conv = conv_options(channels).map(lambda o: {"kind": "conv", **o})
    residual = conv_options(channels).map(lambda o: {"kind": "residual", **o})
    attention = st.fixed_dictionaries(
        {
            "radius": st.sampled_from([1, 2]),
            "heads": st.sampled_from([1, 2]),
            "head_dim": st.sampled_from([2, 4]),
        }
    ).map(lambda o: {"kind": "attention", **o})
    deformable = st.fixed_dictionaries(
        {"kernel_size": st.sampled_from([1, 3]), "max_offset": st.sampled_from([0.5, 1.5])}
    ).map(lambda o: {"kind": "deformable", **o})
    kinds = [sobel, conv, residual, attention, deformable]
    if nested:
        parts = st.lists(perceptions(channels, nested=False), min_size=1, max_size=2)
        kinds.append(parts.map(lambda p: {"kind": "multi", "components": p}))
    return st.one_of(kinds)


@st.composite
def cases(draw: st.DrawFn) -> tuple[NCA, Tensor, dict[str, Any]]:
    """A model as ``build_nca`` makes it from a config, a state with dead cells, and how
    to run it."""
    fixed = draw(st.integers(0, 1))
    channels = draw(st.integers(fixed + 4, fixed + 7))
    layout = ChannelLayout(channels, inputs=fixed, visible=4, alpha=3)
    padding = draw(st.sampled_from(PADDINGS))
    perception = draw(perceptions(channels))
    alive = draw(st.booleans())
    model = ModelConfig(
        channels=channels,
        hidden=draw(st.sampled_from([[8], [24], [16, 12]])),
        activation=draw(st.sampled_from(list(ACTIVATIONS))),
        fire_rate=draw(st.sampled_from([0.25, 0.5, 1.0])),
        alive_mask=alive,
        alive_threshold=draw(st.sampled_from([0.0, 0.1, 0.25])),
        alive_pool=draw(st.booleans()),
        padding=padding,
        update_noise=draw(st.sampled_from([0.0, 0.05])),
        zero_init=False,
    )
    # The alive channel is visible (growing) or an input (self-classifying MNIST).
    alive_channel = 0 if fixed and draw(st.booleans()) else layout.alpha_channel
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    nca = build_nca(model, perception, layout, alive_channel).to(dtype)
    with torch.no_grad():  # offsets that move (they start at zero)
        for name, param in nca.named_parameters():
            if "offset" in name:
                param.normal_(0.0, 0.3)
    # A border mode needs the cells it wraps or mirrors: the perception's, the alive mask's.
    reach = max(nca.perception.radius, 1) + 1
    height, width = draw(st.integers(reach, reach + 6)), draw(st.integers(reach, reach + 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    batch = draw(st.integers(1, 3))
    x = torch.rand((batch, channels, height, width), generator=g, dtype=dtype) - 0.2
    dead = torch.rand((batch, height, width), generator=g) < draw(
        st.sampled_from([0.0, 0.5, 0.9, 1.0])
    )
    x[:, alive_channel][dead] = 0.0
    run = {
        "steps": draw(st.integers(1, 3)),
        "checkpoint_every": draw(st.sampled_from([0, 2])),
        "grad_x": draw(st.booleans()),
    }
    return nca, x, run


def outcome(
    nca: NCA, x0: Tensor, grad_x: bool, run: Callable[[Tensor], list[Tensor]]
) -> list[Tensor]:
    """The states ``run`` returns, and the gradients of a fixed random functional of the
    first with respect to ``x0`` (when ``grad_x``) and every parameter."""
    nca.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(grad_x)
    states = run(x)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(states[0].shape, generator=g, dtype=x.dtype)
    (states[0] * weights).sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in nca.parameters()]
    return [s.detach() for s in states] + ([x.grad] if x.grad is not None else []) + grads


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    """Equal up to rounding: tight in float64, looser in float32; the absolute part
    scaled by the tensor's size, as sums over many cells round by that much."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        single = b.dtype == torch.float32
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        torch.testing.assert_close(
            a,
            b,
            rtol=1e-4 if single else 1e-9,
            atol=(1e-5 if single else 1e-11) * scale,
            msg=lambda m, i=i: f"tensor {i}: {m}",
        )


@settings(max_examples=50, deadline=None, derandomize=True)
@given(cases())
def test_the_trained_step_is_the_reference_step(case: tuple[NCA, Tensor, dict[str, Any]]) -> None:
    nca, x0, run = case
    assert supports(nca, x0) is None, "the fused step does not run for this model"
    assert nca.engine == "auto" and nca.uses_fused_step(x0)
    noise = nca.draw_noise(x0, 1, torch.Generator().manual_seed(1))
    fire = None if noise.fire is None else noise.fire[0]
    upd = None if noise.update is None else noise.update[0]
    assert_same(
        outcome(nca, x0, run["grad_x"], lambda x: [nca.step(x, fire, upd)]),
        outcome(nca, x0, run["grad_x"], lambda x: [nca.reference_step(x, fire, upd)]),
    )

    def rollout(x: Tensor) -> list[Tensor]:
        g = torch.Generator().manual_seed(2)
        final, states = nca.rollout(x, run["steps"], g, run["checkpoint_every"], True)
        return [final, *states]

    fused = outcome(nca, x0, run["grad_x"], rollout)
    nca.engine = "reference"
    assert_same(fused, outcome(nca, x0, run["grad_x"], rollout))


class Shifted(Perception):
    """A perception the fused step does not know: the state and its upper neighbours."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.radius = 1
        self.out_features = 2 * channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.scale * torch.roll(x, 1, dims=2)], 1)


def counting_reference(nca: NCA) -> list[int]:
    """Count the reference steps ``nca`` runs (one entry per step, its batch size)."""
    calls: list[int] = []
    reference = nca.reference_step

    def counted(x: Tensor, fire: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        calls.append(x.shape[0])
        return reference(x, fire, noise)

    nca.reference_step = counted  # type: ignore[method-assign]
    return calls


def grid(dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.rand((2, 6, 7, 5), generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_an_unknown_perception_runs_the_reference_step(caplog: pytest.LogCaptureFixture) -> None:
    nca = NCA(ChannelLayout(6), Shifted(6), hidden=[8], alive_channel=3, zero_init=False)
    nca = nca.double()
    calls = counting_reference(nca)
    x = grid().requires_grad_()
    with caplog.at_level(logging.INFO, logger="nca_cli.engine"):
        final, _ = nca.rollout(x, 3, torch.Generator().manual_seed(0))
        final.square().sum().backward()
        nca.rollout(x, 2, torch.Generator().manual_seed(0), checkpoint_every=1)
        nca.step(x)
    assert len(calls) == 3 + 2 + 1
    assert nca.perception.scale.grad is not None and x.grad is not None
    assert caplog.messages == [FALLBACK.format("perception 'Shifted'")]


def test_an_unknown_activation_runs_the_reference_step_until_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layout = ChannelLayout(6)
    torch.manual_seed(0)
    nca = build_nca(ModelConfig(channels=6, hidden=[8]), {"kind": "sobel"}, layout, 3).double()
    calls = counting_reference(nca)
    x = grid()
    nca.update.act = F.softsign
    with caplog.at_level(logging.INFO, logger="nca_cli.engine"):
        for _ in range(2):
            nca.rollout(x, 2)
        assert len(calls) == 4
        nca.update.act = F.relu  # known again: the fused step
        nca.rollout(x, 2)
    assert len(calls) == 4
    assert caplog.messages == [FALLBACK.format("activation 'softsign'")]


class OwnStep(NCA):
    def reference_step(
        self, x: Tensor, fire: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        return super().reference_step(x, fire, noise).clamp(-1.0, 1.0)


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("fire_rate", 1.5, "fire_rate 1.5"),
        ("update_noise", -0.1, "update_noise -0.1"),
        ("padding", "wrap", "padding 'wrap'"),
        ("alive_pool", 1, "alive_pool 1"),
        ("alive_threshold", float("nan"), "alive_threshold nan"),
        ("alive_channel", 6, "alive_channel 6"),
    ],
)
def test_an_unknown_value_is_not_implemented(option: str, value: Any, reason: str) -> None:
    perception = build_perception({"kind": "sobel"}, 6, "zeros")
    nca = NCA(ChannelLayout(6), perception, hidden=[8], alive_channel=3)
    x = grid(torch.float32)
    assert supports(nca, x) is None
    setattr(nca, option, value)
    assert supports(nca, x) == reason
    assert not nca.uses_fused_step(x) and nca.fused_reason(x) == reason


def test_what_else_the_fused_step_does_not_implement() -> None:
    perception = build_perception({"kind": "conv", "activation": "relu"}, 6, "zeros")
    assert isinstance(perception, ConvPerception)
    nca = NCA(ChannelLayout(6), perception, hidden=[8], alive_channel=3)
    x = grid(torch.float32)
    assert supports(nca, x.bfloat16()) == "dtype torch.bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert supports(nca, x) == "cpu autocast"
    perception.activation = F.softsign
    assert supports(nca, x) == "perception activation 'softsign'"
    subclass = OwnStep(ChannelLayout(6), build_perception({"kind": "sobel"}, 6, "zeros"), [8])
    assert subclass.fused_reason(x) == "the step of 'OwnStep'"
