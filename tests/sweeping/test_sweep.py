"""``nca sweep``: grids and Optuna searches of smoke-sized training runs on SQLite."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_support import in_process, load, sweep_root

from nca_cli.commands.sweep import summarize_main
from nca_cli.sweeping import run as sweep
from nca_cli.sweeping.space import format_value, split_arguments
from nca_cli.sweeping.study import masked

SMOKE = ["trainer=smoke", "logger=none", "dataset.padding=4"]  # 20 x 20 cells
PLOTS = ("history", "importances", "slice", "parallel_coordinate", "intermediate")


def nca_sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``nca sweep`` as a user types it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", "sweep", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


# -- the search space and the command line (no training) ----------------------------------
def test_search_space_from_preset_and_command_line() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params = {"fire_rate": "interval(0.1, 1.0)", "channels": [12, 16], "hidden": 64}
    dims, fixed = split_arguments(
        params,
        ["lr=tag(log, interval(1e-4, 1e-2))", "channels=range(8, 33, 8)", "seed=3"],
    )
    by_name = {d.name: d for d in dims}
    fire, channels, lr = "model.fire_rate", "model.channels", "trainer.optimizer.lr"
    assert list(by_name) == [fire, channels, lr]  # shortcuts named; the command line replaces
    assert by_name[fire].distribution() == FloatDistribution(0.1, 1.0)
    assert by_name[lr].distribution() == FloatDistribution(1e-4, 1e-2, log=True)
    assert by_name[channels].distribution() == IntDistribution(8, 32, step=8)
    assert by_name[channels].grid == (8, 16, 24, 32)
    assert by_name[channels].distribution(grid=True) == CategoricalDistribution([8, 16, 24, 32])
    assert by_name[fire].grid is None
    assert fixed == ["model.hidden=64", "seed=3"]
    for value in ["conv", "1e-3", "true", "a b", "it's", 0.1, 3, False]:
        dims, _ = split_arguments({}, [f"k=choice({format_value(value)}, other)"])
        assert dims[0].values[0] == value, value
    assert format_value(None) == "null"


def test_command_line_shorthands_and_multirun() -> None:
    assert sweep.expand(["fire_rate=0.3,0.5"]) == ["-m", "model.fire_rate=0.3,0.5"]  # a shortcut
    assert sweep.expand(["--cfg", "job", "search=lr"])[0] == "--cfg"
    assert sweep.expand(["study=a", "storage=sqlite:///x.db", "n_jobs=2"]) == [
        "-m",
        "hydra.sweeper.study_name=a",
        "hydra.sweeper.storage=sqlite:///x.db",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    assert "secret" not in masked("postgresql://nca:secret@db.example/sweeps")


def test_reported_loss_is_negated_for_a_study_that_maximises(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from nca_cli.sweeping.config import PrunerConf
    from nca_cli.sweeping.trial import study_reporter

    study = optuna.create_study(
        study_name="dice", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize"
    )
    trial = study.ask()
    sweeper = {
        "study_name": "dice",
        "storage": None,  # SQLite in the sweep folder
        "trial": trial.number,
        "intermediate": "loss",
        "intermediate_direction": "minimize",
        "pruner": vars(PrunerConf(name="none")),
    }
    hydra_cfg = OmegaConf.create({"sweeper": sweeper, "sweep": {"dir": str(tmp_path)}})
    report = study_reporter(hydra_cfg)
    assert report is not None
    report(1, {"loss": 0.25, "lr": 1e-3})
    report(2, {"loss": float("nan")})  # skipped, not stored
    assert study.trials[0].intermediate_values == {1: -0.25}
    assert study_reporter(OmegaConf.create({"sweeper": None})) is None


def test_bad_searches_fail_before_any_trial(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert in_process(monkeypatch, *SMOKE, "fire_rat=0.3,0.5") == 2
    assert "fire_rat" in capsys.readouterr().err
    assert in_process(monkeypatch, *SMOKE, "trainer.batch_size=0", "fire_rate=0.3,0.5") == 2
    assert "trainer.batch_size" in capsys.readouterr().err
    assert in_process(monkeypatch, *SMOKE) == 2
    assert "nothing to search" in capsys.readouterr().err
    assert in_process(monkeypatch, *SMOKE, "sampler=grid", "lr=interval(1e-4, 1e-2)") == 2
    assert "interval" in capsys.readouterr().err
    assert in_process(monkeypatch, *SMOKE, "metric=dice", "fire_rate=0.3,0.5") == 2
    assert "direction=maximize" in capsys.readouterr().err
    assert not sweep_root().exists() or not list(sweep_root().rglob("config.yaml"))


def test_presets_and_slurm_launcher_compose(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for preset in ("fire_channels", "perception", "lr"):
        assert in_process(monkeypatch, "--cfg", "hydra", f"search={preset}") == 0
        config = yaml.safe_load(capsys.readouterr().out)["hydra"]
        assert config["sweeper"]["_target_"] == "hydra_plugins.nca_sweeper.NcaSweeper"
        assert config["sweeper"]["params"], preset
    assert in_process(monkeypatch, "--cfg", "hydra", "hydra/launcher=slurm") == 0
    launcher = yaml.safe_load(capsys.readouterr().out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["timeout_min"] == 240


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ("fire_rate=0.3,abc", "'fire_rate' (model.fire_rate): 'abc'; expected a number"),
        ("fire_rate=interval(-0.1, 1.0)", "-0.1; expected a number in (0, 1]"),
        ("perception=conv,nope", "'perception': 'nope'; expected one of attention"),
        ("trainer.schedule.min_lr=0.0,0.1", "changes nothing: trainer.schedule.name is"),
        ("hydra.sweep.subdir=x", "nca sweep puts trial N in <sweep folder>/N/"),
    ],
)
def test_bad_point_fails_the_sweep_before_any_trial(
    space: str, needle: str, tmp_path: Path
) -> None:
    args = [space, "fire_rate=0.3,0.5"] if space.startswith("hydra.") else [space]
    out = nca_sweep(*args, *SMOKE, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not list(tmp_path.rglob("last.ckpt")) and not list(tmp_path.rglob("optuna.db"))


# -- real sweeps of smoke runs --------------------------------------------------------------
def test_grid_writes_one_run_per_value_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = nca_sweep("fire_rate=0.3,0.5,0.7", *SMOKE, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (sweep_dir,) = sweep_root().iterdir()
    runs = trial_dirs(sweep_dir)
    assert [r.name for r in runs] == ["0", "1", "2"]
    configs = [flat(yaml.safe_load((r / "config.yaml").read_text())) for r in runs]
    differ = {k for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1}
    assert differ == {"model.fire_rate"}
    assert [c["model.fire_rate"] for c in configs] == [0.3, 0.5, 0.7]

    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert [float(r["model.fire_rate"]) for r in rows] == [0.3, 0.5, 0.7]
    for name in PLOTS:
        assert (sweep_dir / "plots" / f"{name}.png").stat().st_size > 1000, name
    assert "study=" in out.stdout  # how to resume

    # Summarize rebuilds the table, CSV and plots from the study alone.
    (sweep_dir / "trials.csv").unlink()
    for png in (sweep_dir / "plots").iterdir():
        png.unlink()
    assert summarize_main([str(sweep_dir)]) == 0
    assert (sweep_dir / "trials.csv").is_file() and (sweep_dir / "plots" / "history.png").is_file()

    again = ["fire_rate=0.3,0.5,0.7", *SMOKE, f"study={sweep_dir.name}"]
    assert in_process(monkeypatch, *again) == 0
    assert "nothing left to run" in capsys.readouterr().out
    assert len(trial_dirs(sweep_dir)) == 3


def test_optuna_study_resumes_with_a_new_sampler_seed(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    common = ["search=lr", "n_trials=4", "study=resumed", "pruner=none", "hydra.sweeper.seed=7"]
    assert in_process(monkeypatch, *common, *SMOKE) == 0
    first = capsys.readouterr().out
    assert in_process(monkeypatch, *common, "n_jobs=2", *SMOKE) == 0  # joblib, 2 at a time
    second = capsys.readouterr().out
    seeds = [re.search(r"sampler seed (\d+)", out).group(1) for out in (first, second)]  # type: ignore[union-attr]
    assert seeds == ["7", "11"]  # the seed plus the trials already run

    sweep_dir = sweep_root() / "resumed"
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    assert [t.number for t in study.trials] == list(range(8))
    assert len({t.params["trainer.optimizer.lr"] for t in study.trials}) == 8
    for trial in study.trials:
        run = Path(trial.user_attrs["run_dir"])
        assert run == (sweep_dir / str(trial.number)).resolve()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["trainer"]["optimizer"]["lr"] == trial.params["trainer.optimizer.lr"]
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # every logged iteration
    threads = {
        yaml.safe_load((r / "config.yaml").read_text())["threads"] for r in trial_dirs(sweep_dir)
    }
    assert threads == {None, max(1, (os.cpu_count() or 1) // 2)}


def test_parallel_trials_start_when_a_worker_frees_up_not_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Trial 0 trains far longer than the others: with batches of n_jobs, trial 2 would wait
    # for trial 0; with workers, trials 2 and 3 run beside it.
    grid = ["trainer.iterations=300,4,5,6", "study=uneven", "pruner=none", "n_jobs=2"]
    assert in_process(monkeypatch, *grid, *SMOKE) == 0
    trials = {t.number: t for t in load(sweep_root() / "uneven").trials}
    assert [trials[n].state for n in range(4)] == [TrialState.COMPLETE] * 4
    assert trials[0].params["trainer.iterations"] == 300
    long_end = trials[0].datetime_complete
    assert long_end is not None
    for number in (2, 3):
        assert trials[number].datetime_complete < long_end, (number, trials)  # type: ignore[operator]


def test_failing_trial_is_recorded_and_the_sweep_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # A threshold above every value kills all cells: the trainer raises DivergenceError.
    code = in_process(monkeypatch, *SMOKE, "model.alive_threshold=5.0,0.1", "study=faulty")
    assert code == 1  # after the other trial ran and the table was written
    sweep_dir = sweep_root() / "faulty"
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "DivergenceError" in study.trials[0].user_attrs["error"]
    assert "dead" in (sweep_dir / "0" / "error.txt").read_text()
    assert study.trials[1].value is not None

    # Run again: the failed point is tried again, the finished one is not.
    assert in_process(monkeypatch, *SMOKE, "model.alive_threshold=5.0,0.1", "study=faulty") == 1
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.FAIL,
    ]
    assert study.trials[2].params == study.trials[0].params


def test_weak_trial_is_pruned_from_its_intermediate_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # The learning rate as the intermediate value makes the ranking certain: the second
    # trial's 1e-2 is worse than the median (1e-3) of the finished one, at its first report.
    pruning = ["hydra.sweeper.intermediate=lr", "hydra.sweeper.pruner.startup_trials=1"]
    code = in_process(monkeypatch, *SMOKE, *pruning, "lr=0.001,0.01", "study=pruned")
    assert code == 0
    study = load(sweep_root() / "pruned")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert list(study.trials[1].intermediate_values) == [1]
    rows = list(csv.DictReader((sweep_root() / "pruned" / "trials.csv").open()))
    assert rows[1]["state"] == "PRUNED" and rows[1]["mse"] == "" and rows[1]["last_step"] == "1"


def test_wheel_ships_the_sweeper_plugin_and_presets(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(repo)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nca_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "hydra_plugins/nca_sweeper/__init__.py",
        "nca_cli/sweeping/sweeper.py",
        "nca_cli/sweeps/fire_channels.yaml",
        "nca_cli/sweeps/perception.yaml",
        "nca_cli/sweeps/lr.yaml",
        "nca_cli/conf/sweep.yaml",
        "nca_cli/conf/hydra/launcher/slurm.yaml",
    ):
        assert path in names, path
    assert not any(n.startswith(("sweeps/", "hydra_plugins/__init__")) for n in names)


@pytest.mark.parametrize("space", [["fire_rate=0.3,0.5"], ["search=lr", "n_trials=2"]])
def test_hydra_sweep_dir_holds_the_study_and_resumes(
    space: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    folder = tmp_path / "mine"
    args = [*space, *SMOKE, f"hydra.sweep.dir={folder}"]
    assert in_process(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert [r.name for r in trial_dirs(folder)] == ["0", "1"]
    assert (folder / "trials.csv").is_file() and (folder / "optuna.db").is_file()
    assert f"hydra.sweep.dir={folder}" in out.splitlines()[-1]  # the resume command
    assert not sweep_root().exists()
    again = [*args, f"study={load(folder).study_name}", "n_trials=1"]
    assert in_process(monkeypatch, *again) == 0  # the study in that folder resumes
    states = [t.state for t in load(folder).trials]
    assert states == [TrialState.COMPLETE] * (2 if space[0].startswith("fire") else 3)
