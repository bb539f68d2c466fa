"""Two ``nca sweep`` workers share one study on a real PostgreSQL server, started by the
test on 127.0.0.1 in a temporary folder (Debian's postgresql package; `.ci/run` installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SMOKE = ["trainer=smoke", "logger=none", "dataset.padding=4"]


def test_two_workers_share_one_study_without_losing_a_trial(postgres: str, tmp_path: Path) -> None:
    env = {**os.environ, "NCA_OPTUNA_STORAGE": postgres, "NCA_OUTPUT_DIR": str(tmp_path)}
    counts = (3, 2)
    command = [sys.executable, "-m", "nca_cli", "sweep", "search=lr", "study=shared", "pruner=none"]
    # Both start at once on an empty database: no tables, no study yet.
    workers = [
        subprocess.Popen(
            [*command, f"n_trials={n}", *SMOKE],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in counts
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, out

    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.trials
    assert [t.number for t in trials] == list(range(sum(counts)))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * sum(counts)
    sweep_dir = tmp_path / "sweep" / "shared"
    folders = sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit())
    assert folders == sorted(str(t.number) for t in trials)
    for trial in trials:
        run = Path(trial.user_attrs["run_dir"])
        assert run == (sweep_dir / str(trial.number)).resolve()
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics[study.user_attrs["metric"]] == pytest.approx(trial.value)
    info = json.loads((sweep_dir / "study.json").read_text())
    assert info["storage"] == postgres and info["study_name"] == "shared"
