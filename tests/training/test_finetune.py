"""Fine-tuning (``init=RUN``, ``trainer.trainable``): a new run starts from another run's
weights and trains all of them or only some; models that do not fit are a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.training.checkpoint import load_checkpoint
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import train

SMALL = [
    "trainer=smoke",
    "logger=none",
    "dataset.size=12",
    "dataset.padding=4",
    "trainer.steps.min=8",
    "trainer.steps.max=8",
    "perception=conv",  # a learned perception, for trainable=update to keep
]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.ckpt")["model"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("source")
    train(compose(SMALL), run)
    return run


@pytest.mark.parametrize(
    ("trainable", "changed"),
    [
        ("all", {"perception", "update.layers.0", "update.layers.1"}),
        ("update", {"update.layers.0", "update.layers.1"}),
        ("last", {"update.layers.1"}),
    ],
)
def test_only_the_trainable_weights_change(
    source: Path, tmp_path: Path, trainable: str, changed: set[str]
) -> None:
    config = compose([*SMALL, f"init={source}", f"trainer.trainable={trainable}"])
    train(config, tmp_path)
    before, after = weights(source), weights(tmp_path)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert {name.rsplit(".", 1)[0].removesuffix(".conv") for name in moved} == changed
    payload = load_checkpoint(tmp_path / "last.ckpt")
    assert payload["init"]["path"] == str((source / "last.ckpt").resolve())
    assert payload["optimizer"]["state"]  # a fresh optimiser, stepped by this run alone
    saved: dict[str, Any] = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["init"] == str(source) and saved["trainer"]["trainable"] == trainable


def test_a_model_that_does_not_fit_names_the_layer_and_both_shapes(
    source: Path, tmp_path: Path
) -> None:
    config = compose([*SMALL, f"init={source}", "model.hidden=[32]"])
    with pytest.raises(ConfigError, match=r"update\.layers\.0\.weight has shape \(128, .*\(32, "):
        train(config, tmp_path)
    with pytest.raises(ConfigError, match=r"'init'.*neither a run folder"):
        train(compose([*SMALL, f"init={tmp_path / 'nothing'}"]), tmp_path / "other")
    with pytest.raises(ConfigError, match=r"trainer\.trainable"):
        parse_run_config(compose([*SMALL, "trainer.trainable=middle"]))
