"""Cross-validated sweeps (``cv.k=K``): every trial is a k-fold on the study's one split,
its objective is the fold mean, weak trials are pruned after their first folds, and a
retried trial keeps the folds that had finished."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_support import in_process, load, sweep_root

from nca_cli.sweeping import run as sweep

DATA = ["task=shapes", "trainer=smoke", "logger=none", "dataset.samples=30"]


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def fold_files(trial_dir: Path, name: str) -> list[Path]:
    return sorted(trial_dir.glob(f"fold_*/{name}"), key=lambda p: p.parent.name)


def test_every_trial_is_a_kfold_on_the_same_split(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Two fire rates, three folds each; the folds of a trial train two at a time (joblib).
    args = [*DATA, "fire_rate=0.3,0.5", "cv.k=3", "cv.n_jobs=2", "study=cv"]
    assert in_process(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    sweep_dir = sweep_root() / "cv"
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2

    # One split for the study: drawn once, kept in the study and in splits/.
    folds = json.loads((sweep_dir / "splits" / "folds.json").read_text())
    assert study.user_attrs["cv"]["folds"] == folds and len(folds) == 3
    for trial in study.trials:
        run = sweep_dir / str(trial.number)
        configs = [yaml.safe_load(p.read_text()) for p in fold_files(run, "config.yaml")]
        assert [c["dataset"]["splits"] for c in configs] == [
            str((sweep_dir / "splits" / f"fold_{i}.json").resolve()) for i in range(3)
        ]
        fire_rates = {c["model"]["fire_rate"] for c in configs}
        assert fire_rates == {trial.params["model.fire_rate"]}
        assert {c["logger"]["group"] for c in configs} == {f"cv/{trial.number}"}  # W&B
        used = [json.loads(p.read_text()) for p in fold_files(run, "splits.json")]
        assert [{"train": u["train"], "val": u["val"]} for u in used] == folds

        # The objective is the mean of the folds' metric, its std a user attribute.
        dice = [json.loads(p.read_text())["dice"] for p in fold_files(run, "metrics.json")]
        assert trial.value == pytest.approx(statistics.mean(dice), rel=1e-9)
        assert trial.user_attrs["std"] == pytest.approx(statistics.stdev(dice), rel=1e-9)
        assert trial.user_attrs["fold_values"] == dice
        assert trial.user_attrs["cv_k"] == 3
        summary = json.loads((run / "summary.json").read_text())
        assert summary["metrics"]["dice"]["values"] == dice
        assert (run / "folds.png").is_file()
        # The running mean after each fold but the last is what the pruner saw.
        assert trial.intermediate_values == pytest.approx(
            {0: dice[0], 1: statistics.mean(dice[:2])}, rel=1e-9
        )

    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [float(r["dice_std"]) for r in rows] == [t.user_attrs["std"] for t in study.trials]
    assert "dice (mean ± std of 3 folds)" in out and " ± " in out

    # Run again: nothing is trained, and k comes from the study.
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/fold_*/metrics.json")}
    assert in_process(monkeypatch, *DATA, "fire_rate=0.3,0.5", "study=cv") == 0
    assert "nothing left to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((sweep_dir / "splits" / "folds.json").read_text()) == folds


def test_weak_trial_is_pruned_after_its_first_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    # The final iteration as the objective makes the ranking certain: the second trial's
    # first fold (2 iterations) is worse than the median (6) of the finished trial.
    args = [*DATA, "trainer.iterations=6,2", "metric=iteration", "direction=maximize"]
    pruning = ["hydra.sweeper.pruner.startup_trials=1", "cv.k=3", "study=pruned"]
    assert in_process(monkeypatch, *args, *pruning) == 0
    sweep_dir = sweep_root() / "pruned"
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[0].value == 6
    assert study.trials[1].intermediate_values == {0: 2.0}
    weak = sweep_dir / "1"
    assert [p.parent.name for p in fold_files(weak, "metrics.json")] == ["fold_0"]
    assert not (weak / "fold_1").exists() and not (weak / "summary.json").exists()
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert rows[1]["state"] == "PRUNED" and rows[1]["iteration"] == ""


def test_retried_trial_keeps_its_finished_folds(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import nca_cli.training.run_folder as run_folder

    real = run_folder.train
    crashes = []

    def crash_on_third_fold(config: dict, run_dir: Path, *args: Any, **kw: Any) -> dict:
        if run_dir.name == "fold_2" and not crashes:  # a worker killed during fold 2
            crashes.append(run_dir)
            raise RuntimeError("worker lost")
        return real(config, run_dir, *args, **kw)

    monkeypatch.setattr(run_folder, "train", crash_on_third_fold)
    args = [*DATA, "fire_rate=0.3,0.5", "cv.k=3", "study=retry", "n_trials=1"]
    assert in_process(monkeypatch, *args) == 1  # its only trial failed
    sweep_dir = sweep_root() / "retry"
    first = sweep_dir / "0"
    done = {p.parent.name: p.stat().st_mtime_ns for p in fold_files(first, "metrics.json")}
    assert sorted(done) == ["fold_0", "fold_1"]
    assert "worker lost" in (first / "error.txt").read_text()

    # The grid tries the failed point again: a new trial that takes over the two finished
    # folds (untouched) and trains the third.
    assert in_process(monkeypatch, *args) == 0
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params
    retry = sweep_dir / "1"
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in fold_files(retry, "metrics.json")}
    assert sorted(stamps) == ["fold_0", "fold_1", "fold_2"]
    assert {k: stamps[k] for k in done} == done, "a finished fold was trained again"
    assert stamps["fold_2"] > max(done.values())
    assert (first / "fold_0.moved").read_text().strip() == str((retry / "fold_0").resolve())
    dice = [json.loads(p.read_text())["dice"] for p in fold_files(retry, "metrics.json")]
    assert study.trials[1].value == pytest.approx(statistics.mean(dice), rel=1e-9)
    assert [p.name for p in trial_dirs(sweep_dir)] == ["0", "1"]

    # The study's k and data cannot change under it; a task without data cannot fold.
    capsys.readouterr()
    assert in_process(monkeypatch, *args, "cv.k=4") == 2
    assert "cv.k=3" in capsys.readouterr().err
    assert in_process(monkeypatch, *args, "dataset.samples=20") == 2
    assert "no longer has" in capsys.readouterr().err
    growing = ["task=growing", "trainer=smoke", "logger=none", "fire_rate=0.3,0.5", "cv.k=3"]
    assert in_process(monkeypatch, *growing) == 2
    assert "no data to split" in capsys.readouterr().err
    assert in_process(monkeypatch, *DATA, "fire_rate=0.3,0.5", "cv.k=1") == 2
    assert "at least 2 folds" in capsys.readouterr().err


def test_cv_shorthands() -> None:
    assert sweep.expand(["cv.k=5", "cv.n_jobs=2", "cv.splits=f.json"]) == [
        "-m",
        "hydra.sweeper.cv.k=5",
        "hydra.sweeper.cv.n_jobs=2",
        "hydra.sweeper.cv.splits=f.json",
    ]


def test_study_split_is_drawn_once_and_checked(tmp_path: Path) -> None:
    from nca_cli.composition import compose
    from nca_cli.config import ConfigError
    from nca_cli.crossval.folds import case_pool, make_folds
    from nca_cli.sweeping.cv import study_folds

    base = compose(DATA)
    pool = case_pool(base)
    given = make_folds(pool.cases, 3, seed=5)  # a hand-made split, not the seed's
    (tmp_path / "given.json").write_text(json.dumps(given))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    assert study_folds(study, url, tmp_path, base, 3, str(tmp_path / "given.json")) == 3
    saved = tmp_path / "splits" / "folds.json"
    assert json.loads(saved.read_text()) == given == study.user_attrs["cv"]["folds"]
    stamp = saved.stat().st_mtime_ns

    # Another worker (or a resumed run) with no cv.k: the study's k and folds, files kept.
    assert study_folds(study, url, tmp_path, base, None, None) == 3
    assert saved.stat().st_mtime_ns == stamp
    (tmp_path / "other.json").write_text(json.dumps(make_folds(pool.cases, 3, seed=6)))
    with pytest.raises(ConfigError, match="not the split of study"):
        study_folds(study, url, tmp_path, base, 3, str(tmp_path / "other.json"))

    # A study of single runs does not become cross-validated.
    plain = optuna.create_study(study_name="plain", storage=url)
    plain.tell(plain.ask(), 1.0)
    assert study_folds(plain, url, tmp_path / "p", base, None, None) is None
    with pytest.raises(ConfigError, match="single runs"):
        study_folds(plain, url, tmp_path / "p", base, 3, None)
