"""The dense step (``model.engine=dense``, what CUDA runs): the reference step's states and
gradients with fixed shapes, also under ``torch.compile``; and which step each engine runs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from test_step import assert_same, cases, outcome
from torch import Tensor

from nca_cli.config import ConfigError
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import DENSE_BLOCK, NCA, build_nca
from nca_cli.engine.schema import ModelConfig
from nca_cli.training.checks import check_config


def rollouts(nca: NCA, run: dict[str, Any]) -> Any:
    def rollout(x: Tensor) -> list[Tensor]:
        g = torch.Generator().manual_seed(2)
        final, states = nca.rollout(x, run["steps"], g, run["checkpoint_every"], True)
        return [final, *states]

    return rollout


@settings(max_examples=25, deadline=None, derandomize=True)
@given(cases())
def test_the_dense_step_is_the_reference_step(case: tuple[NCA, Tensor, dict[str, Any]]) -> None:
    nca, x0, run = case
    nca.engine, nca.compile_dense = "dense", False
    assert nca.step_kind(x0) == "dense"
    dense = outcome(nca, x0, run["grad_x"], rollouts(nca, run))
    nca.engine = "reference"
    assert_same(dense, outcome(nca, x0, run["grad_x"], rollouts(nca, run)))


@pytest.mark.parametrize(
    ("perception", "fixed", "noise"),
    [({"kind": "sobel"}, 0, 0.0), ({"kind": "conv", "features": 12}, 1, 0.02)],
)
def test_the_compiled_dense_step_is_the_reference_step(
    perception: dict[str, Any], fixed: int, noise: float, caplog: pytest.LogCaptureFixture
) -> None:
    layout = ChannelLayout(8 + fixed, inputs=fixed, visible=4, alpha=3)
    model = ModelConfig(channels=8 + fixed, hidden=[16], update_noise=noise, zero_init=False)
    torch.manual_seed(0)
    nca = build_nca(model, perception, layout, layout.alpha_channel)
    x0 = torch.rand((2, 8 + fixed, 10, 9), generator=torch.Generator().manual_seed(1))
    run = {"steps": 4, "checkpoint_every": 0, "grad_x": True}
    nca.engine = "dense"
    with caplog.at_level(logging.INFO):
        compiled = outcome(nca, x0, True, rollouts(nca, run))
        again = outcome(nca, x0, True, rollouts(nca, run))  # no second compilation
    assert caplog.text.count("compiled the dense step") == 1
    nca.engine = "reference"
    reference = outcome(nca, x0, True, rollouts(nca, run))
    assert_same(compiled, reference)
    assert_same(again, reference)


def test_rollouts_of_every_length_share_two_compiled_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A training draws its rollout lengths (64-96 steps for the lizard): compiling a graph
    # per length would compile again and again.
    layout = ChannelLayout(8, visible=4, alpha=3)
    torch.manual_seed(0)
    model = ModelConfig(channels=8, hidden=[16], zero_init=False)
    nca = build_nca(model, {"kind": "sobel"}, layout, 3)
    x0 = torch.rand((2, 8, 10, 10), generator=torch.Generator().manual_seed(1))
    finals = {}
    with torch.no_grad(), caplog.at_level(logging.INFO):
        nca.engine = "dense"
        for steps in (DENSE_BLOCK + 1, 2 * DENSE_BLOCK + 1, DENSE_BLOCK + 4):
            finals[steps] = nca.rollout(x0, steps, torch.Generator().manual_seed(steps))[0]
        nca.engine = "reference"
        for steps, final in finals.items():
            want = nca.rollout(x0, steps, torch.Generator().manual_seed(steps))[0]
            torch.testing.assert_close(final, want, rtol=1e-5, atol=1e-5)
    compiled = [r.message for r in caplog.records if "compiled the dense step" in r.message]
    assert len(compiled) == 2, compiled
    assert any(f"blocks of {DENSE_BLOCK} steps" in m for m in compiled)
    assert any("blocks of 1 step " in m for m in compiled) and nca.compile_seconds > 0


def test_each_engine_runs_its_step() -> None:
    layout = ChannelLayout(8, visible=4, alpha=3)
    x = torch.rand(1, 8, 6, 6)
    for engine, kind in [("auto", "fused"), ("fused", "fused"), ("dense", "dense")]:
        nca = build_nca(ModelConfig(channels=8, engine=engine), {"kind": "sobel"}, layout, 3)
        assert nca.step_kind(x) == kind
    nca = build_nca(ModelConfig(channels=8, engine="reference"), {"kind": "sobel"}, layout, 3)
    assert nca.step_kind(x) == "reference" and not nca.uses_fused_step(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the fused step has no bf16
        assert build_nca(ModelConfig(channels=8), {"kind": "sobel"}, layout, 3).step_kind(x) == (
            "reference"
        )


def test_engine_settings_are_checked() -> None:
    from nca_cli.composition import compose

    assert compose(["model.engine=dense"])["model"]["engine"] == "dense"
    with pytest.raises(ConfigError, match=r"model\.engine"):
        check_config(compose(["model.engine=gpu"]))
    with pytest.raises(ConfigError, match=r"model\.compile"):  # only the dense step compiles
        overrides = ["model.engine=reference", "model.compile=false"]
        check_config(compose(overrides), overrides)
