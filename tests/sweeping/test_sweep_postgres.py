"""Two ``nca sweep`` workers share one study on a real PostgreSQL server, started by the
test on 127.0.0.1 in a temporary folder (Debian's postgresql package; `.ci/run` installs it)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SMOKE = ["trainer=smoke", "logger=none", "dataset.padding=4"]


def server_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on the PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").is_file() and Path(folder, "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URL of an empty database on a fresh server; the server stops afterwards."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (dev extras) is missing")
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="nca-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
    start = time.perf_counter()
    initdb = [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "nca", "-A", "trust"]
    subprocess.run(
        [*initdb, "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"  # loopback only, socket in the folder
    subprocess.run(
        [*pg_ctl, "-l", str(root / "server.log"), "-o", options, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    print(f"PostgreSQL initdb + start: {time.perf_counter() - start:.2f} s")
    try:
        from sqlalchemy import create_engine, text

        admin = create_engine(
            f"postgresql+psycopg://nca@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE sweeps"))
        admin.dispose()
        yield f"postgresql+psycopg://nca@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


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
