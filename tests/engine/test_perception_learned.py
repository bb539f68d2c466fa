"""Attention and deformable perceptions: shapes, gradients, receptive field."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from nca_cli.composition import compose
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import build_nca
from nca_cli.engine.perception import build_perception
from nca_cli.engine.schema import ModelConfig
from nca_cli.tasks import task_class
from nca_cli.training.schema import parse_run_config

CASES = [
    {"kind": "attention", "radius": 1, "heads": 2, "head_dim": 4},
    {"kind": "attention", "radius": 2, "heads": 1, "head_dim": 3, "features": 7},
    {"kind": "deformable", "kernel_size": 3, "max_offset": 1.0},
    {"kind": "deformable", "kernel_size": 5, "max_offset": 1.5, "features": 7},
]


def randomised(cfg: dict, padding: str = "zeros") -> torch.nn.Module:
    """The perception with every parameter random (offsets included), so that any
    dependence within the receptive field shows."""
    torch.manual_seed(0)
    p = build_perception(cfg, 5, padding)
    with torch.no_grad():
        for param in p.parameters():
            param.normal_(0.0, 1.0)
    return p


@pytest.mark.parametrize("cfg", CASES)
def test_shapes_and_gradients(cfg: dict) -> None:
    p = build_perception(cfg, 5, "circular")
    x = torch.randn(2, 5, 9, 11, requires_grad=True)
    y = p(x)
    assert y.shape == (2, p.out_features, 9, 11)
    assert p.out_features == cfg.get("features", 15)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in p.named_parameters():
        if name.startswith("offset."):
            continue  # zero-initialised offsets: checked with random weights below
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_deformable_offsets_learn_and_start_as_a_plain_conv() -> None:
    p = build_perception({"kind": "deformable", "kernel_size": 3}, 4, "zeros")
    x = torch.randn(1, 4, 8, 8)
    plain = F.conv2d(x, p.conv.weight, p.conv.bias, padding=1)
    torch.testing.assert_close(p(x), plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        p.offset.weight.normal_(0.0, 0.5)
    p(x).square().sum().backward()
    assert p.offset.weight.grad is not None and p.offset.weight.grad.abs().sum() > 0


def ring(size: int, centre: int, distance: int) -> torch.Tensor:
    """Cells at Chebyshev distance exactly ``distance`` from the centre."""
    idx = torch.arange(size) - centre
    d = torch.maximum(idx[:, None].abs(), idx[None, :].abs())
    return d == distance


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("cfg", CASES)
def test_receptive_field_is_the_declared_radius(cfg: dict, padding: str) -> None:
    p = randomised(cfg, padding)
    size, c = 15, 7
    x = torch.randn(1, 5, size, size)
    with torch.no_grad():
        base = p(x)[0, :, c, c]
        for distance, changes in ((p.radius, True), (p.radius + 1, False)):
            for cell in ring(size, c, distance).nonzero():
                y = x.clone()
                y[0, :, cell[0], cell[1]] += 3.0
                if not changes:
                    torch.testing.assert_close(p(y)[0, :, c, c], base, atol=0, rtol=0)
            if changes:  # the whole ring at the radius: some cell of it must matter
                y = x.clone()
                y[0, :, ring(size, c, distance)] += 3.0
                assert not torch.allclose(p(y)[0, :, c, c], base)


TASK_PRESETS = sorted(
    p.name.removesuffix(".yaml")
    for p in resources.files("nca_cli.conf").joinpath("task").iterdir()
    if p.name.endswith(".yaml")
)
BOTH = "perception.components=[{kind: attention},{kind: deformable}]"


@pytest.mark.parametrize("preset", TASK_PRESETS)
def test_usable_in_every_task_and_in_the_multi_perception(preset: str) -> None:
    # Published-model presets (mnist: model=selfclassifying) pin their own perception.
    model = ["model=default"] if preset == "mnist" else []
    for choice in (["perception=attention"], ["perception=deformable"], ["perception=multi", BOTH]):
        run = parse_run_config(compose([f"task={preset}", *model, *choice]))
        task = task_class(run.task["name"])(run)
        nca = build_nca(run.model, run.perception, task.layout, task.alive_channel)
        state = task.fresh(1, torch.Generator().manual_seed(0))["state"]
        with torch.no_grad():
            assert nca.step(state).shape == state.shape, choice


@pytest.mark.parametrize("cfg", [CASES[0], CASES[2]])
def test_fused_step_matches_the_reference_step(cfg: dict) -> None:
    layout = ChannelLayout(8, visible=4, alpha=3)
    torch.manual_seed(0)
    nca = build_nca(ModelConfig(hidden=[16], zero_init=False), cfg, layout, 3).double()
    with torch.no_grad():
        for name, param in nca.named_parameters():
            if "offset" in name:
                param.normal_(0.0, 0.3)
    x0 = torch.rand(2, 8, 9, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for fast in (True, False):
        nca.engine = "fused" if fast else "reference"
        nca.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        final, _ = nca.rollout(x, 3, torch.Generator().manual_seed(2))
        final.square().sum().backward()
        results.append([final.detach(), x.grad, *(p.grad for p in nca.parameters())])
    for fused, reference in zip(*results, strict=True):
        torch.testing.assert_close(fused, reference)
