"""The model zoo: every model still gives its golden figure (so an engine change that breaks
a trained model fails here), the checkpoints are slim, ``nca zoo`` lists and checks them,
and ``zoo:NAME`` is taken wherever a run is."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nca_cli import api
from nca_cli.config import ConfigError
from nca_cli.evaluation.runs import find_checkpoint
from nca_cli.evaluation.zoo import KEPT, MAX_BYTES, golden_figure
from nca_cli.paths import output_root
from nca_cli.training.checkpoint import load_checkpoint
from nca_cli.training.finetune import source_checkpoint
from nca_cli.zoo import catalogue, models_folder

MODELS = catalogue()
REQUIRED = {
    "growing-lizard",
    "persistent-lizard",
    "regenerating-lizard",
    "mnist",
    "pneumonia",
    "emoji-conditional",
    "edges2emoji",
}


def test_the_zoo_holds_the_promised_models() -> None:
    assert set(MODELS) >= REQUIRED


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_still_gives_its_golden_figure(name: str) -> None:
    model = MODELS[name]
    figure = golden_figure(model)
    assert abs(figure - model.golden.value) <= model.golden.tolerance, (
        f"zoo:{name}: {model.golden.metric} {figure:.6g}, recorded {model.golden.value:.6g} "
        f"± {model.golden.tolerance}"
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_each_checkpoint_is_slim_and_says_how_it_was_made(name: str) -> None:
    model = MODELS[name]
    assert model.path.stat().st_size < MAX_BYTES
    payload = load_checkpoint(model.path)
    assert set(payload) <= set(KEPT) and "pool" not in payload and "optimizer" not in payload
    assert payload["iteration"] == model.iteration
    assert model.command.startswith("nca ") and model.description


def test_a_broken_model_fails_its_golden_check(tmp_path: Path) -> None:
    """The check is not true by construction: the lizard with its last layer halved (what
    a broken update would do) misses its figure."""
    model = MODELS["regenerating-lizard"]
    payload = load_checkpoint(model.path)
    payload["model"]["update.layers.1.weight"] = payload["model"]["update.layers.1.weight"] * 0.5
    broken = tmp_path / "broken.ckpt"
    torch.save(payload, broken)
    twin = dataclasses.replace(model, file=str(broken))  # an absolute file wins the join
    assert twin.path == broken
    figure = golden_figure(twin)
    assert abs(figure - model.golden.value) > model.golden.tolerance


def test_nca_zoo_lists_and_checks(tmp_path: Path) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "nca_cli", "zoo"], capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    for name in MODELS:
        assert f"zoo:{name}" in listing.stdout
    check = subprocess.run(
        [sys.executable, "-m", "nca_cli", "zoo", "check", "growing-lizard"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    assert "checked now:" in check.stdout and "ok" in check.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "nca_cli", "zoo", "check", "dragon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "zoo:growing-lizard" in bad.stderr


def test_zoo_names_are_runs_everywhere(tmp_path: Path) -> None:
    # nca eval's --run and --checkpoint, and init=, resolve them alike
    assert find_checkpoint(Path("zoo:mnist")) == MODELS["mnist"].path
    assert find_checkpoint(checkpoint=Path("zoo:mnist")) == MODELS["mnist"].path
    assert source_checkpoint("zoo:mnist") == MODELS["mnist"].path
    report = api.export(Path("zoo:regenerating-lizard"), "c", tmp_path / "c", steps=4)
    assert report.max_abs_error is not None and report.grid == [72, 72, 16]
    # What is made of a zoo model goes to the outputs, never into the installed package.
    page = api.export(Path("zoo:growing-lizard"), "web")
    assert Path(page.folder) == output_root() / "zoo" / "growing-lizard" / "export" / "web"
    assert sorted(p.name for p in models_folder().iterdir()) == sorted(
        m.file for m in MODELS.values()
    )
    with pytest.raises(ConfigError, match="no zoo model 'dragon'"):
        api.export(Path("zoo:dragon"), "c", tmp_path / "none")
    # Fine-tuning from the zoo: the run starts from the lizard's weights.
    config = api.compose(
        [
            "experiment=distill",
            "task=growing",
            "init=zoo:growing-lizard",
            "trainer.iterations=1",
            "logger=none",
            "threads=1",
        ]
    )
    api.train(config, tmp_path / "tuned")
    tuned = load_checkpoint(tmp_path / "tuned" / "last.ckpt")["model"]
    source = load_checkpoint(MODELS["growing-lizard"].path)["model"]
    first = "update.layers.0.weight"
    assert (tuned[first] - source[first]).abs().max() < 0.05  # one step away, not fresh
    assert (tuned[first] - source[first]).abs().max() > 0
