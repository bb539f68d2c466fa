"""Sweeps, cross-validated sweeps and k-folds on a real one-node SLURM cluster (the
``slurm_cluster`` fixture), submitted through Hydra's submitit launcher as a user would,
with the preset ``hydra/launcher=slurm``; cancelled, timed-out and interrupted jobs."""

from __future__ import annotations

import csv
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
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


def new_jobs(cluster, before: set[str], count: int, state: str) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """``sacct``'s view of the jobs submitted since ``before``, once ``count`` of them are
    recorded in ``state`` (slurmdbd records a job a moment after slurmctld ends it), or
    what it shows after a minute."""
    deadline = time.monotonic() + 60
    while True:
        jobs = {k: v for k, v in cluster.accounting().items() if k not in before}
        settled = sum(v["state"].startswith(state) for v in jobs.values()) >= count
        if settled or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


def test_the_cluster_runs_and_accounts_for_jobs(slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    output = f"--output={slurm_cluster.root / 'log' / '%j.out'}"
    ok = slurm_cluster.run("sbatch", "--parsable", output, "--wrap", "true").strip()
    slow = slurm_cluster.run("sbatch", "--parsable", output, "--wrap", "sleep 120").strip()
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


def test_a_cancelled_trial_fails_with_its_reason_and_is_resumed_when_retried(
    slurm_cluster, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**slurm_cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")}
    command = [
        sys.executable,
        "-m",
        "nca_cli",
        "sweep",
        "fire_rate=0.3,0.5",
        "study=faults",
        "n_jobs=2",
        *SMOKE,
        "trainer.iterations=400",
        "trainer.checkpoint_every=20",
        *launcher(slurm_cluster),
    ]
    folder = tmp_path / "outputs" / "sweep" / "faults"
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while not (folder / "0" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (folder / "0" / "last.ckpt").is_file(), "trial 0 wrote no checkpoint"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.load_study(study_name="faults", storage=storage)
    array = study.trials[0].user_attrs["slurm_job"]  # recorded by the trial's job
    slurm_cluster.run("scancel", array)
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, out  # a trial failed; the sweep went on and finished
    study = optuna.load_study(study_name="faults", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.COMPLETE}, out
    error = study.trials[0].user_attrs["error"]
    assert f"its SLURM job {array} ended CANCELLED by" in error, error
    stopped_at = torch.load(folder / "0" / "last.ckpt", weights_only=True)["iteration"]
    accounting = slurm_cluster.accounting()
    assert accounting[array]["state"].startswith("CANCELLED"), accounting

    # Run again: the failed point is retried, continuing the cancelled run.
    again = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="faults", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, *[TrialState.COMPLETE] * 2]
    retry = folder / "2"
    assert (folder / "0.moved").read_text().strip() == str(retry.resolve())
    log = (retry / "train.log").read_text()
    assert f"from iteration {stopped_at}" in log, log[-2000:]
    print(f"cancelled job {array}: {accounting[array]}; trial 0: {error}")


def readme_command() -> tuple[str, list[str]]:
    """The README's cluster command: its storage URL and the ``nca sweep`` arguments."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("<!-- cluster-command", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").strip().splitlines()
    storage = lines[0].split("=", 1)[1].strip("'")
    return storage, shlex.split(lines[1])


def test_the_readme_cluster_command_runs_on_the_test_cluster(
    slurm_cluster, postgres: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    storage, args = readme_command()
    assert storage.startswith("postgresql+psycopg://") and args[:2] == ["nca", "sweep"]
    # The site's values; a small search on this 2-CPU node without a GPU for PyTorch.
    site = {
        "hydra.launcher.partition": slurm_cluster.partition,
        "hydra.launcher.account": slurm_cluster.account,
        "hydra.launcher.setup": f"[source {sys.prefix}/bin/activate]",
        "n_trials": "4",
        "n_jobs": "2",
        "device": "cpu",
        "hydra.launcher.cpus_per_task": "1",
        "hydra.launcher.mem_gb": "1",
    }
    given = {a.split("=", 1)[0]: a for a in args[2:]}
    assert set(site) <= set(given), sorted(given)  # the README still sets each of them
    argv = [f"{k}={site[k]}" if k in site else a for k, a in given.items()]
    env = {**slurm_cluster.env, "NCA_OPTUNA_STORAGE": postgres, "NCA_OUTPUT_DIR": str(tmp_path)}
    before = set(slurm_cluster.accounting())
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "sweep", *argv, *SMOKE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="lr-cluster", storage=postgres)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    folder = tmp_path / "sweep" / "lr-cluster"
    for trial in study.trials:
        assert (folder / str(trial.number) / "metrics.json").is_file()
    with (folder / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "best trial" in out.stdout.lower(), out.stdout  # the submitting process's summary
    jobs = new_jobs(slurm_cluster, before, 4, "COMPLETED")
    assert len(jobs) == 4 and {v["state"] for v in jobs.values()} == {"COMPLETED"}, jobs
    assert {t.user_attrs["slurm_job"] for t in study.trials} == set(jobs)
    scripts = list((tmp_path / "sweep" / "lr-cluster" / ".submitit").rglob("*_submission.sh"))
    script = scripts[0].read_text()
    for line in (
        f"#SBATCH --account={slurm_cluster.account}",
        "#SBATCH --gpus-per-node=1",
        f"#SBATCH --partition={slurm_cluster.partition}",
        "#SBATCH --time=240",
        f"source {sys.prefix}/bin/activate",
    ):
        assert line in script, script
    print(f"the README's sweep, 4 trials 2 at a time as SLURM jobs: {seconds:.0f} s")


def test_ctrl_c_cancels_the_sweeps_jobs_and_keeps_the_study_consistent(
    slurm_cluster, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**slurm_cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")}
    before = set(slurm_cluster.accounting())
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nca_cli",
            "sweep",
            "fire_rate=0.3,0.5",
            "study=interrupted",
            "n_jobs=2",
            *SMOKE,
            "trainer.iterations=100000",
            *launcher(slurm_cluster),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    running: list[str] = []
    while len(running) < 2 and time.monotonic() < deadline:
        running = slurm_cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
        time.sleep(0.5)
    assert len(running) == 2, slurm_cluster.run("squeue")
    sweep.send_signal(signal.SIGINT)
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, out
    assert "cancelled SLURM jobs" in out and "resume with" in out, out
    deadline = time.monotonic() + 60
    while slurm_cluster.run("squeue", "-h", "-o", "%i").split() and time.monotonic() < deadline:
        time.sleep(0.5)
    jobs = new_jobs(slurm_cluster, before, 2, "CANCELLED")
    assert jobs and all(v["state"].startswith("CANCELLED") for v in jobs.values()), jobs
    folder = tmp_path / "outputs" / "sweep" / "interrupted"
    study = optuna.load_study(study_name="interrupted", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert {t.user_attrs["error"] for t in study.trials} == {"interrupted (Ctrl-C)"}


# Slow (run with `make test-slow`): on a 1-minute limit, SLURM's pre-timeout USR2 (submitit
# asks for it 120 s before the limit) may reach the job while it starts, so how the trial
# fails depends on timing; seen in 2 of 3 full runs here.
@pytest.mark.slow
def test_a_trial_over_its_time_limit_fails_with_the_reason(slurm_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**slurm_cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")}
    options = [*launcher(slurm_cluster), "hydra.launcher.timeout_min=1"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nca_cli",
            "sweep",
            "fire_rate=0.5,0.6",
            "study=late",
            "n_trials=1",
            *SMOKE,
            "trainer.iterations=100000",
            "trainer.checkpoint_every=1",
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout + out.stderr  # the trial failed, the sweep ended
    folder = tmp_path / "outputs" / "sweep" / "late"
    study = optuna.load_study(study_name="late", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    error = study.trials[0].user_attrs["error"]
    # submitit's pre-timeout signal usually comes first; else SLURM's own SIGTERM at the
    # limit, which sacct may not have recorded yet when the sweep asks. SLURM may send the
    # pre-timeout USR2 up to a minute early: on a 1-minute limit it can reach the job
    # before submitit handles it, and the job ends by that signal with no result.
    assert any(
        reason in error
        for reason in (
            "reached its time limit (hydra.launcher.timeout_min=1",
            "ended TIMEOUT (sacct)",
            "was stopped by SIGTERM (scancel, its time limit or preemption)",
        )
    ) or re.search(r"ended [A-Z_]+ before it wrote a result", error), error
    # What the retry continues from, unless SLURM's signal came (it may come up to a minute
    # early) before the first checkpoint: then the error says the retry starts afresh.
    if (folder / "0" / "last.ckpt").is_file():
        assert "continues it" in error, error
    else:
        assert "stopped before its first checkpoint" in error, error
    print(f"time limit: {error}; sacct: {slurm_cluster.accounting()}")


def nca(cluster, tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """An ``nca`` command against the test cluster, with outputs under ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=tmp_path,
        env={**cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_kfold_trains_every_fold_in_its_own_job(slurm_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    before = set(slurm_cluster.accounting())
    data = ["task=shapes", "dataset.samples=30", "trainer.iterations=20"]
    common = ["trainer=smoke", "logger=none", *launcher(slurm_cluster)]
    out = nca(slurm_cluster, tmp_path, "kfold", "k=3", *data, *common)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (tmp_path / "outputs" / "kfold").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["metrics"]["dice"]["values"]) == 3
    assert (folder / "folds.png").is_file()
    jobs = new_jobs(slurm_cluster, before, 3, "COMPLETED")
    assert len(jobs) == 3 and {v["state"] for v in jobs.values()} == {"COMPLETED"}, jobs
    for i in range(3):  # three jobs, three finished folds
        assert (folder / f"fold_{i}" / "metrics.json").is_file()
    print(f"kfold k=3 as SLURM jobs: {seconds:.0f} s; sacct: {jobs}")


def test_two_sweeps_on_one_study_share_it_without_losing_a_trial(
    slurm_cluster, postgres: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    env = {**slurm_cluster.env, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")}
    common = [
        sys.executable, "-m", "nca_cli", "sweep", "search=lr", "study=shared",
        f"storage={postgres}", "n_jobs=1", *SMOKE, *launcher(slurm_cluster),
    ]  # fmt: skip
    sweeps = [
        subprocess.Popen(
            [*common, f"n_trials={n}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (2, 1)
    ]
    outputs = [s.communicate(timeout=600)[0] for s in sweeps]
    seconds = time.perf_counter() - start
    assert [s.returncode for s in sweeps] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    jobs = {t.user_attrs["slurm_job"] for t in study.trials}
    assert len(jobs) == 3, jobs  # one job per trial, none run twice
    lrs = [t.params["trainer.optimizer.lr"] for t in study.trials]
    assert len(set(lrs)) == 3
    folder = tmp_path / "outputs" / "sweep" / "shared"
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    print(f"two sweeps (2 + 1 trials) on one study: {seconds:.0f} s")


def test_a_cross_validated_sweep_trains_every_fold_in_its_own_job(
    slurm_cluster, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    before = set(slurm_cluster.accounting())
    args = ["sweep", "fire_rate=0.3,0.5", "cv.k=2", "study=cv", "n_jobs=2", "cv.n_jobs=2"]
    data = ["task=shapes", "dataset.samples=30", "trainer=smoke", "trainer.iterations=20"]
    out = nca(slurm_cluster, tmp_path, *args, *data, "logger=none", *launcher(slurm_cluster))
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "outputs" / "sweep" / "cv"
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        summary = json.loads((folder / str(trial.number) / "summary.json").read_text())
        values = summary["metrics"]["dice"]["values"]
        assert len(values) == 2 and trial.value == sum(values) / 2
        assert (folder / str(trial.number) / "folds.png").is_file()
        for fold in range(2):
            assert (folder / str(trial.number) / f"fold_{fold}" / "metrics.json").is_file()
    assert "best trial" in out.stdout.lower(), out.stdout
    jobs = new_jobs(slurm_cluster, before, 4, "COMPLETED")
    assert len(jobs) == 4 and {v["state"] for v in jobs.values()} == {"COMPLETED"}, jobs
    print(f"cross-validated sweep, 2 trials x 2 folds as SLURM jobs: {seconds:.0f} s")
