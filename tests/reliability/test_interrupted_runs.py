"""K-fold and sweeps killed or interrupted: no finished fold or trial is lost, the running
one is marked failed or interrupted, and running the command again resumes; a diverging
trial counts as failed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from reliability_support import TINY, assert_clean_error, nca, rows, start, wait_for

from nca_cli.training.checkpoint import load_checkpoint

SHAPES = ["task=shapes", "trainer=smoke", "logger=none", "threads=1", "dataset.samples=30"]
# Enough iterations that the resumed fold is still training when the test interrupts it,
# even when the machine is so loaded that the test polls late (120 were finished first).
ITERATIONS = 600
KFOLD = [*SHAPES, f"trainer.iterations={ITERATIONS}", "k=2"]


def test_kfold_killed_then_interrupted_then_resumed(tmp_path: Path) -> None:
    kfold_root = tmp_path / "outputs" / "kfold"
    log = tmp_path / "a.log"
    proc = start("kfold", *KFOLD, cwd=tmp_path, log=log)
    wait_for(
        lambda: kfold_root.is_dir() and any(kfold_root.iterdir()),
        120,
        "the folder",
        proc=proc,
        log=log,
    )
    (folder,) = kfold_root.iterdir()
    fold0, fold1 = folder / "fold_0", folder / "fold_1"
    wait_for(lambda: len(rows(fold1 / "metrics.jsonl")) >= 2, 240, "fold 1", proc=proc, log=log)
    proc.kill()  # SIGKILL
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = (fold0 / "metrics.json").stat().st_mtime_ns
    killed_at = load_checkpoint(fold1 / "last.ckpt")["iteration"]

    # `dir=` alone: k and the overrides come from the folder
    log = tmp_path / "b.log"
    proc = start("kfold", f"dir={folder}", cwd=tmp_path, log=log)

    def continued() -> bool:  # rows past the checkpoint are dropped, then written again
        resumed = "continuing" in (fold1 / "train.log").read_text()
        return resumed and len(rows(fold1 / "metrics.jsonl")) > killed_at + 1

    wait_for(continued, 240, "fold 1 to continue", proc=proc, log=log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    output = (tmp_path / "b.log").read_text()
    assert_clean_error(
        output, "fold_0: finished", "fold_1: interrupted at iteration", f"nca kfold dir={folder}"
    )
    status = json.loads((folder / "status.json").read_text())
    assert status[0] == "fold_0: finished" and "interrupted" in status[1]
    assert f"continuing {fold1} from iteration {killed_at}" in (fold1 / "train.log").read_text()

    out = nca("kfold", f"dir={folder}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "already finished" in out.stdout + out.stderr
    assert (fold0 / "metrics.json").stat().st_mtime_ns == finished, "a finished fold retrained"
    iterations = [r["iteration"] for r in rows(fold1 / "metrics.jsonl")]
    assert iterations == list(range(1, ITERATIONS + 1)), "fold 1 lost or repeated iterations"
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["metrics"]["dice"]["values"]) == 2
    assert json.loads((folder / "status.json").read_text()) == [
        "fold_0: finished",
        "fold_1: finished",
    ]


def trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url).trials


def test_sweep_interrupted_keeps_finished_trials_and_resumes(tmp_path: Path) -> None:
    """Grid: a diverging point (every cell dies), a normal one, and one interrupted."""
    grid = [
        "model.alive_threshold=5.0,0.1,0.11",
        *TINY,
        "trainer.iterations=60",
        "pruner=none",
        "study=s",
    ]
    sweep_dir = tmp_path / "outputs" / "sweep" / "s"
    log = tmp_path / "a.log"
    proc = start("sweep", *grid, cwd=tmp_path, log=log)
    wait_for(
        lambda: len(rows(sweep_dir / "2" / "metrics.jsonl")) >= 2,
        240,
        "trial 2",
        proc=proc,
        log=log,
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    output = (tmp_path / "a.log").read_text()
    assert "resume with" in output and "Traceback" not in output
    first = {t.number: t for t in trials(sweep_dir)}
    assert first[0].state == TrialState.FAIL and "dead" in first[0].user_attrs.get("error", "")
    assert "dead" in (sweep_dir / "0" / "error.txt").read_text()
    assert first[1].state == TrialState.COMPLETE
    assert first[2].state == TrialState.FAIL, "the interrupted trial is not marked"
    finished = (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns

    again = nca("sweep", *grid, cwd=tmp_path)
    assert again.returncode == 1, again.stderr  # the diverging point, retried, failed again
    assert "1 of the 2 trials failed" in again.stderr
    assert (sweep_dir / "1" / "metrics.json").stat().st_mtime_ns == finished
    done = [t for t in trials(sweep_dir) if t.state == TrialState.COMPLETE]
    assert sorted(t.params["model.alive_threshold"] for t in done) == [0.1, 0.11]


@pytest.mark.slow
def test_sweep_killed_marks_its_running_trial_failed_and_resumes(tmp_path: Path) -> None:
    grid = ["fire_rate=0.3,0.5", *TINY, "trainer.iterations=60", "pruner=none", "study=k"]
    grid.append("hydra.sweeper.heartbeat=1")
    sweep_dir = tmp_path / "outputs" / "sweep" / "k"
    log = tmp_path / "a.log"
    proc = start("sweep", *grid, cwd=tmp_path, log=log)
    wait_for(
        lambda: len(rows(sweep_dir / "1" / "metrics.jsonl")) >= 2,
        240,
        "trial 1",
        proc=proc,
        log=log,
    )
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns
    time.sleep(2.5)  # past the heartbeat
    again = nca("sweep", *grid, cwd=tmp_path)
    # The killed trial is recorded failed; this run retries its point, which completes, so
    # none of this run's trials failed.
    assert again.returncode == 0, again.stderr
    states = {t.number: t.state for t in trials(sweep_dir)}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == finished
    done = [t for t in trials(sweep_dir) if t.state == TrialState.COMPLETE]
    assert sorted(t.params["model.fire_rate"] for t in done) == [0.3, 0.5]
