"""task=edges2emoji: bundled faces and edges, seeded disjoint splits, the out-of-distribution
sets, and `nca eval --compare`'s grid of a supervised and an adversarial run."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nca_cli.commands import eval as eval_command
from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.tasks import task_class
from nca_cli.tasks.edges2emoji import bundled_drawings, bundled_faces
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import train

SMALL = [
    "trainer=smoke",
    "logger=none",
    "threads=1",
    "dataset.size=8",
    "dataset.padding=2",
    "trainer.steps.min=4",
    "trainer.steps.max=6",
    "trainer.batch_size=2",
]


def make_task(*overrides: str) -> Any:
    config = compose(["task=edges2emoji", *SMALL, *overrides])
    return task_class("edges2emoji")(parse_run_config(config))


def test_bundled_faces_edges_and_drawings() -> None:
    folder = resources.files("nca_cli.tasks") / "assets" / "faces"
    faces = bundled_faces()
    assert len(faces) == 50 and len(bundled_drawings()) >= 5
    for name in faces:
        with resources.as_file(folder / f"{name}.png") as path:
            assert Image.open(path).mode == "RGBA" and Image.open(path).size == (32, 32)
        with resources.as_file(folder / "edges" / f"{name}.png") as path:
            edges = Image.open(path)
            assert edges.mode == "L" and edges.size == (32, 32)
            assert 0 < int((np.asarray(edges) > 0).sum()) < 32 * 32 / 2  # thin strokes
    with resources.as_file(folder) as path:
        assert sum(p.stat().st_size for p in path.rglob("*.png")) < 300_000


def test_splits_are_disjoint_seeded_and_cover_every_face() -> None:
    task = make_task()
    train_ids, val_ids = set(task.splits["train"]), set(task.splits["val"])
    assert not train_ids & val_ids and not task.splits["test"]
    assert train_ids | val_ids == set(bundled_faces()) and len(val_ids) == 10
    assert make_task().splits == task.splits
    assert make_task("dataset.split_seed=1").splits != task.splits


def test_states_start_as_the_edges_and_target_the_faces() -> None:
    task = make_task("dataset.augment=false")
    batch = task.batch_of([0, 1])
    state, edges, target = batch["state"], batch["edges"], batch["target"]
    assert state.shape == (2, 16, 12, 12) and edges.shape == (2, 1, 12, 12)
    assert torch.equal(state[:, 3:4], edges) and float(edges.max()) > 0.5
    assert not state[:, :3].any() and not state[:, 4:].any()
    assert torch.all(target[:, :3] <= target[:, 3:4] + 1e-6)  # premultiplied
    assert not target[..., :2, :].any()  # the padding is empty
    fresh = task.fresh(4, torch.Generator().manual_seed(0))
    assert set(fresh) == {"state", "edges", "target"}


def test_out_of_distribution_sets() -> None:
    task = make_task("dataset.size=32", "dataset.padding=4")
    val = next(iter(task.evaluation_batches("val", 64)))
    ood = next(iter(task.evaluation_batches("ood", 64)))
    assert torch.equal(ood["target"], val["target"])
    assert not torch.equal(ood["edges"], val["edges"])
    assert float(ood["edges"].max()) <= 1.0 and float(ood["edges"].sum()) > 0
    assert torch.equal(make_task("dataset.size=32", "dataset.padding=4").ood_edges, task.ood_edges)
    other = make_task("dataset.size=32", "dataset.padding=4", "dataset.ood_seed=1")
    assert not torch.equal(other.ood_edges, task.ood_edges)
    drawings = next(iter(task.evaluation_batches("drawings", 64)))
    assert "target" not in drawings and len(drawings["state"]) == len(bundled_drawings())
    assert task.eval_images(drawings["state"], drawings) is None
    assert task.eval_images(ood["state"], ood) is not None
    with pytest.raises(ConfigError, match="no ground truth"):
        task.predict(drawings["state"], drawings)
    assert all(task.has_split(s) for s in ("train", "val", "ood", "drawings"))


def test_compare_writes_the_grid_and_both_runs_figures(tmp_path: Path) -> None:
    runs = {}
    for loss in ("mse", "gan"):
        config = compose(
            ["task=edges2emoji", *SMALL, f"loss={loss}", "trainer.iterations=2", "pool_size=4"]
        )
        train(config, tmp_path / loss)
        saved = json.loads((tmp_path / loss / "splits.json").read_text())
        assert saved["val"] == make_task().splits["val"]
        runs[loss] = tmp_path / loss
    argv = ["--run", str(runs["mse"]), "--compare", str(runs["gan"]), "--no-wandb"]
    eval_command.main([*argv, "--steps", "4", "--show", "2", "--sets", "val", "ood", "drawings"])
    (out,) = (runs["mse"] / "eval").iterdir()
    result = json.loads((out / "sets.json").read_text())
    assert [r["loss"] for r in result["runs"]] == ["mse", "gan"]
    assert list(result["sets"]) == ["val", "ood", "drawings"]
    for name in ("val", "ood"):
        for label in ("A", "B"):
            figures = result["sets"][name][label]
            assert len(figures["lpips"]["samples"]) == 10 and figures["image_mse"]["mean"] > 0
    assert (
        result["sets"]["drawings"]["A"] is None and not result["sets"]["drawings"]["ground_truth"]
    )
    grid = Image.open(out / "grid.png")
    assert grid.mode == "RGB" and grid.size[1] > grid.size[0]  # 3 sets of 2 rows, 4 columns


def test_protocol_options_do_not_mix_with_sets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        eval_command.main(["--sets", "--damage", "half"])
    assert "--damage belongs to the regeneration protocol" in capsys.readouterr().err
