"""`nca kfold`: folds are right, every fold really trains, summaries and resume hold."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from nca_cli.composition import compose
from nca_cli.crossval.folds import case_pool, make_folds
from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from nca_cli.training.trainer import Trainer

OVERRIDES = ["task=shapes", "trainer=smoke", "logger=none", "dataset.samples=30"]


def kfold(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", "kfold", *args],
        cwd=root,
        env={**os.environ, "NCA_OUTPUT_DIR": str(root / "outputs")},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kfold")
    out = kfold(*OVERRIDES, "k=3", root=root)
    assert out.returncode == 0, out.stderr
    (folder,) = (root / "outputs" / "kfold").iterdir()
    return folder


def test_folds_are_disjoint_and_cover_the_pool() -> None:
    ids = [f"c{i:03d}" for i in range(23)]
    folds = make_folds(ids, 5, seed=0)
    vals = [set(f["val"]) for f in folds]
    assert sorted(c for v in vals for c in v) == ids  # every case validates exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == ids
    assert make_folds(ids, 5, seed=0) == folds and make_folds(ids, 5, seed=1) != folds


def test_stratified_folds_keep_class_ratios() -> None:
    ids = [f"c{i:03d}" for i in range(100)]
    labels = [0] * 80 + [1] * 20
    by_id = dict(zip(ids, labels, strict=True))
    for fold in make_folds(ids, 5, seed=0, labels=labels):
        assert Counter(by_id[c] for c in fold["val"]) == {0: 16, 1: 4}


def test_classification_folds_are_stratified_over_train_and_val_only() -> None:
    """PneumoniaMNIST: folds over the official train + val cases, by class; test kept out."""
    config = compose(
        ["task=medmnist", "dataset.name=pneumoniamnist", "trainer=smoke", "logger=none"]
    )
    pool = case_pool(config)
    assert pool.labels is not None and len(pool.cases) == 4708 + 524 and len(pool.test) == 624
    assert not set(pool.cases) & set(pool.test)
    by_id = dict(zip(pool.cases, pool.labels, strict=True))
    overall = Counter(pool.labels)
    folds = make_folds(pool.cases, 5, pool.seed, pool.labels)
    for fold in folds:
        counts = Counter(by_id[c] for c in fold["val"])
        for label, n in overall.items():
            assert abs(counts[label] - n / 5) <= 1, (label, counts, overall)


def test_kfold_writes_folds_runs_and_summary(finished: Path) -> None:
    folds = json.loads((finished / "folds.json").read_text())
    assert len(folds) == 3
    val = [c for f in folds for c in f["val"]]
    assert len(val) == len(set(val))
    test_split = json.loads((finished / "fold_0.json").read_text())["test"]
    assert not set(val) & set(test_split)
    for i, fold in enumerate(folds):
        used = json.loads((finished / f"fold_{i}" / "splits.json").read_text())
        assert used["train"] == fold["train"] and used["val"] == fold["val"]
    assert (finished / "folds.png").is_file()


def test_every_fold_trains_its_own_weights(finished: Path) -> None:
    config = load_checkpoint(finished / "fold_0" / "last.ckpt")["config"]
    initial = Trainer(config, finished / "scratch").nca.state_dict()
    weights = [load_checkpoint(finished / f"fold_{i}" / "last.ckpt")["model"] for i in range(3)]
    for i, w in enumerate(weights):
        assert any(not torch.equal(w[n], initial[n]) for n in initial), f"fold {i} never trained"
        for j in range(i):
            assert any(not torch.equal(w[n], weights[j][n]) for n in w), (i, j)


def test_summary_matches_the_fold_files(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    for name in ("dice", "iou", "loss"):
        values = [
            json.loads((finished / f"fold_{i}" / "metrics.json").read_text())[name]
            for i in range(3)
        ]
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        assert summary["metrics"][name]["values"] == values
        assert summary["metrics"][name]["mean"] == pytest.approx(mean)
        assert summary["metrics"][name]["std"] == pytest.approx(std)


def test_resumed_kfold_skips_finished_folds(finished: Path, tmp_path: Path) -> None:
    done = finished / "fold_0" / "metrics.json"
    stamp = done.stat().st_mtime_ns
    (finished / "fold_2" / "metrics.json").unlink()  # as if fold 2 was interrupted
    out = kfold(f"dir={finished}", *OVERRIDES, "k=3", root=tmp_path)
    assert out.returncode == 0, out.stderr
    assert done.stat().st_mtime_ns == stamp, "a finished fold was trained again"
    assert (finished / "fold_2" / "metrics.json").is_file()
    assert "already finished" in out.stderr + out.stdout


def test_saved_split_file_is_reproduced_exactly(finished: Path, tmp_path: Path) -> None:
    split_file = finished / "folds.json"
    out = kfold(*OVERRIDES, "k=3", f"splits={split_file}", "trainer.iterations=1", root=tmp_path)
    assert out.returncode == 0, out.stderr
    (again,) = (tmp_path / "outputs" / "kfold").iterdir()
    assert (again / "folds.json").read_text() == (finished / "folds.json").read_text()


def test_kfold_needs_a_task_with_data(tmp_path: Path) -> None:
    out = kfold("task=growing", "trainer=smoke", "logger=none", "k=3", root=tmp_path)
    assert out.returncode == 2 and "no data to split" in out.stderr


def test_composed_overrides_reach_every_fold(finished: Path) -> None:
    expected = compose(OVERRIDES)["dataset"]["samples"]
    for i in range(3):
        saved = load_checkpoint(finished / f"fold_{i}" / "last.ckpt")["config"]
        assert saved["dataset"]["samples"] == expected == 30


def test_hydra_sweep_dir_is_the_kfold_folder(tmp_path: Path) -> None:
    """The folds, the summary and the resume all use the folder that Hydra's option names."""
    folder = tmp_path / "cv"
    out = kfold(*OVERRIDES, "k=3", f"hydra.sweep.dir={folder}", root=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("summary.json", "folds.png", "status.json", "kfold.json"):
        assert (folder / name).is_file(), name
    assert not (tmp_path / "outputs").exists(), "something went to the default folder"
    assert "hydra" not in (folder / "kfold.json").read_text()
    done = [folder / f"fold_{i}" / "metrics.json" for i in range(3)]
    stamps = [path.stat().st_mtime_ns for path in done]
    again = kfold(f"dir={folder}", root=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [path.stat().st_mtime_ns for path in done] == stamps, "a finished fold retrained"
    assert (again.stdout + again.stderr).count("already finished") == 3


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["hydra.sweep.subdir=x"], ["hydra.sweep.subdir", "<folder>/fold_<i>/", "dir="]),
        (["hydra.run.dir=x"], ["hydra.run.dir", "dir=", "hydra.sweep.dir="]),
        (["dir=a", "hydra.sweep.dir=b"], ["dir=a", "hydra.sweep.dir=b"]),
    ],
)
def test_output_options_kfold_cannot_honour_are_refused(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    out = kfold(*OVERRIDES, "k=3", *args, root=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)
    assert not any(tmp_path.iterdir()), "a folder was made before the refusal"


def diverged_checkpoint(run_dir: Path) -> None:
    """A fold folder interrupted after its weights blew up: resuming it diverges at once."""
    payload = Trainer(compose(OVERRIDES), run_dir.parent / "scratch").state_dict()
    for value in payload["model"].values():
        value.fill_(math.nan)
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / CHECKPOINT_NAME, payload)


def test_a_diverged_fold_fails_the_kfold_after_the_other_folds(tmp_path: Path) -> None:
    folder = tmp_path / "cv"
    diverged_checkpoint(folder / "fold_0")
    out = kfold(*OVERRIDES, "k=3", f"hydra.sweep.dir={folder}", root=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "diverged" in (folder / "fold_0" / "error.txt").read_text()
    assert not (folder / "fold_0" / "metrics.json").exists()
    for i in (1, 2):
        assert (folder / f"fold_{i}" / "metrics.json").is_file(), f"fold {i} did not train"
    status = json.loads((folder / "status.json").read_text())
    assert status[0].startswith("fold_0: failed: training diverged at iteration 1")
    assert status[1:] == ["fold_1: finished", "fold_2: finished"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["folds"] == [1, 2] and len(summary["metrics"]["dice"]["values"]) == 2
    assert "fold_0: failed: training diverged" in out.stderr
    assert f"nca kfold dir={folder}" in out.stderr
