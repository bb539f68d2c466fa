"""Texture synthesis: the style loss, the overflow penalty, training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nca_cli.commands import eval as eval_command
from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.tasks.texture import TextureTask
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import train

SMALL = ["task=texture", "dataset.size=16", "dataset.target_size=32"]


def texture_task(*overrides: str) -> TextureTask:
    return TextureTask(parse_run_config(compose([*SMALL, *overrides])))


def test_style_loss_is_zero_for_the_sample_and_positive_otherwise() -> None:
    task = texture_task("dataset.size=32")
    state = torch.zeros(2, task.layout.channels, 32, 32)
    state[:, :3] = task.target
    state[1, :3] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = task.loss(state, {"state": state})
    assert loss.shape == (2,)
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-6) and float(loss[1]) > 0.1
    # Projections drawn at random: the sample stays at zero, the other stays positive.
    again = task.loss(state, {"state": state})
    assert float(again[0]) == pytest.approx(0.0, abs=1e-6) and float(again[1]) > 0.1
    fixed = task.predict(state, {"state": state})["style"]
    torch.testing.assert_close(fixed, task.predict(state, {"state": state})["style"])


def test_overflow_penalty_on_hand_made_states() -> None:
    task = texture_task()
    state = torch.zeros(1, task.layout.channels, 2, 2)
    state[0, 0, 0, 0] = 1.5  # RGB over 1 by 0.5
    state[0, 1, 0, 0] = -0.25  # RGB under 0 by 0.25
    state[0, 5, 1, 1] = -3.0  # hidden beyond -1 by 2
    rgb_cells, hidden_cells = 3 * 4, (task.layout.channels - 3) * 4
    expected = 0.75 / rgb_cells + 2.0 / hidden_cells
    assert float(task.overflow(state)[0]) == pytest.approx(expected)
    assert float(task.overflow(torch.zeros_like(state).uniform_(0, 1))[0]) == 0.0


def test_target_paths_relative_to_the_data_root_or_absolute(shared_data: Path) -> None:
    relative = texture_task()
    absolute = texture_task(f"dataset.target={shared_data / 'dtd' / 'bubbly_0101.jpg'}")
    assert relative.target.shape == (3, 32, 32)
    torch.testing.assert_close(relative.target, absolute.target)
    with pytest.raises(ConfigError, match=r"dataset\.target"):
        texture_task("dataset.target=dtd/missing.jpg")


def test_texture_trains_and_regenerates_after_half_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = compose([*SMALL, "trainer=smoke", "logger=none", "dataset.size=16", "channels=8"])
    run = tmp_path / "run"
    final = train(config, run)
    assert {"style", "overflow"} <= set(final) and torch.isfinite(torch.tensor(final["style"]))
    steps = ["--stage1", "2", "3", "--stage2", "4", "--perturb-at", "5", "--stage3", "8"]
    eval_command.main(
        ["--run", str(run), "--damage", "half", "--samples", "2", *steps, "--no-wandb"]
    )
    assert "Recovery" in capsys.readouterr().out
    (folder,) = (run / "eval").iterdir()
    report = json.loads((folder / "eval.json").read_text())
    assert report["primary_metric"] == "style" and report["damage"]["kind"] == "half"
    assert len(report["style_stage3"]["samples"]) == 2
