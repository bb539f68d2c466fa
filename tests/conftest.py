"""Test environment: W&B offline, outputs in a temporary folder, ../shared data, Ctrl-C as
in a terminal; a real PostgreSQL server for the tests that share a study (sweeps, the SLURM
cluster)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """SIGINT handled as in an interactive shell, even when the tests run as a background
    job (`&`, nohup), whose processes inherit it ignored: the commands the tests start (and
    interrupt) then take Ctrl-C as a user's terminal would deliver it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NCA_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("TORCH_HOME", os.environ.get("TORCH_HOME", str(SHARED / "torch_home")))
    monkeypatch.setenv("NCA_DATA_DIR", os.environ.get("NCA_DATA_DIR", str(SHARED / "data")))


@pytest.fixture
def shared_data() -> Path:
    """The real data sets beside the checkout (../shared/data or NCA_DATA_DIR)."""
    return Path(os.environ.get("NCA_DATA_DIR", str(SHARED / "data")))


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
