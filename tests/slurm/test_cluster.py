"""Sweeps on a real one-node SLURM cluster (the ``slurm_cluster`` fixture), submitted through
Hydra's submitit launcher as a user would, with the preset ``hydra/launcher=slurm``."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

SMOKE = ["trainer=smoke", "logger=none", "dataset.padding=4"]


def launcher(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    """The preset's options for the test cluster: its partition, no GPU, one CPU a job."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
    ]


def test_the_cluster_runs_and_accounts_for_jobs(slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    ok = slurm_cluster.run("sbatch", "--parsable", "--wrap", "true").strip()
    slow = slurm_cluster.run("sbatch", "--parsable", "--wrap", "sleep 120").strip()
    time.sleep(2)
    slurm_cluster.run("scancel", slow)
    deadline = time.monotonic() + 60
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {k: v["state"] for k, v in slurm_cluster.accounting().items()}
        if states.get(ok) == "COMPLETED" and states.get(slow, "").startswith("CANCELLED"):
            break
        time.sleep(1)
    assert states.get(ok) == "COMPLETED" and states.get(slow, "").startswith("CANCELLED"), states


def test_a_sweep_runs_its_trials_as_slurm_jobs(slurm_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    before = set(slurm_cluster.accounting())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nca_cli",
            "sweep",
            "search=lr",
            "study=cluster",
            "n_trials=2",
            "n_jobs=2",
            *SMOKE,
            *launcher(slurm_cluster),
        ],
        cwd=tmp_path,
        env={**slurm_cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "outputs" / "sweep" / "cluster"
    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert (folder / str(trial.number) / "metrics.json").is_file()
    with (folder / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "best trial" in out.stdout.lower(), out.stdout
    jobs = {k: v for k, v in slurm_cluster.accounting().items() if k not in before}
    assert len(jobs) == 2 and {v["state"] for v in jobs.values()} == {"COMPLETED"}, jobs
    print(f"sweep of 2 trials as SLURM jobs: {seconds:.0f} s")
