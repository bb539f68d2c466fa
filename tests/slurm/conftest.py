"""A real one-node SLURM cluster for the tests: munge with a fresh key, MariaDB and slurmdbd
(submitit reads job states with ``sacct``), slurmctld and slurmd, all in a temporary folder
with their own ports on 127.0.0.1, started once per session and stopped at its end, also
when a test fails. Debian's ``slurm-wlm``, ``slurmdbd``, ``munge`` and ``mariadb-server``;
where they are missing the tests skip, except in CI (which installs them: ``.ci/run``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "sacct")
PARTITION = "nca"
CLUSTER = "ncatest"
ACCOUNT = "nca-test"
GPUS = 2  # declared, not real: jobs may ask for GPUs as on a cluster (they train on the CPU)


@dataclass
class Cluster:
    """A running test cluster: ``env`` points the SLURM clients at it."""

    root: Path
    env: dict[str, str]
    partition: str
    account: str
    node: str
    start_seconds: float

    def run(self, *command: str, check: bool = True) -> str:
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def accounting(self) -> dict[str, dict[str, str]]:
        """``sacct``'s view of every job: state, reason and exit code by job id."""
        out = self.run("sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,Reason,ExitCode")
        rows = [line.split("|") for line in out.splitlines() if line]
        return {r[0]: {"name": r[1], "state": r[2], "reason": r[3], "exit": r[4]} for r in rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(ok: object, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log.is_file() else "(no log)"
    raise RuntimeError(f"{what} did not start within {timeout} s; {log}:\n{tail}")


def _stop(pid_file: Path) -> None:
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        reason = (
            f"SLURM test cluster: {', '.join(missing)} not found: apt-get install slurm-wlm "
            "slurmdbd munge mariadb-server"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI installs them: see .ci/run)")
        pytest.skip(reason)
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="nca-slurm-"))
    root.chmod(0o755)  # munge's socket must be reachable by every user
    for sub in ("state", "spool", "log", "db"):
        (root / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    ports = {k: _free_port() for k in ("ctld", "slurmd", "dbd", "mysql")}
    munge = root / "munge.sock"
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    log = root / "log"
    try:
        subprocess.run(["mungekey", "--create", f"--keyfile={root / 'munge.key'}"], check=True)
        (root / "munge.key").chmod(0o600)
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={root / 'munge.key'}",
                f"--socket={munge}",
                f"--pid-file={root / 'munged.pid'}",
                f"--log-file={log / 'munged.log'}",
                f"--seed-file={root / 'munged.seed'}",
            ],
            check=True,
        )
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={root / 'db'}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={root / 'db'}",
                "--user=root",
                f"--socket={root / 'mysql.sock'}",
                f"--port={ports['mysql']}",
                "--bind-address=127.0.0.1",
                f"--pid-file={root / 'mysql.pid'}",
                f"--log-error={log / 'mysql.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: (root / "mysql.sock").exists(), "MariaDB", log / "mysql.log")
        (root / "slurmdbd.conf").write_text(
            f"AuthType=auth/munge\nAuthInfo=socket={munge}\nDbdHost=localhost\n"
            f"DbdAddr=127.0.0.1\nDbdPort={ports['dbd']}\nSlurmUser=root\n"
            f"LogFile={log / 'slurmdbd.log'}\nPidFile={root / 'slurmdbd.pid'}\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={ports['mysql']}\nStorageLoc=slurm_acct_db\nStorageUser=root\n"
        )
        (root / "slurmdbd.conf").chmod(0o600)
        for i in range(GPUS):  # stand-ins for /dev/nvidia<i>: nothing binds devices here
            (root / f"gpu{i}").touch()
        devices = f"{root}/gpu[0-{GPUS - 1}]"
        (root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={node} Name=gpu File={devices}\n"
        )
        (root / "slurm.conf").write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER}",
                    f"SlurmctldHost={node}(127.0.0.1)",
                    f"SlurmctldPort={ports['ctld']}",
                    f"SlurmdPort={ports['slurmd']}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={munge}",
                    "CredType=cred/munge",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={log / 'slurmctld.log'}",
                    f"SlurmdLogFile={log / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SwitchType=switch/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=127.0.0.1",
                    f"AccountingStoragePort={ports['dbd']}",
                    f"AccountingStoragePass={munge}",  # the munge socket, for slurmdbd
                    "JobCompType=jobcomp/none",
                    "GresTypes=gpu",
                    "MinJobAge=600",
                    "KillWait=5",
                    # Time limits are whole minutes: slurmctld checks them every 5 s here.
                    "OverTimeLimit=0",
                    "MessageTimeout=20",
                    "SchedulerParameters=sched_interval=2",
                    f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
                    f"RealMemory=4096 Gres=gpu:{GPUS} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        subprocess.run(["slurmdbd"], env=env, check=True)
        cluster = Cluster(root, env, PARTITION, ACCOUNT, node, 0.0)

        def dbd_up() -> bool:
            out = subprocess.run(
                ["sacctmgr", "-i", "add", "cluster", CLUSTER],
                env=env,
                capture_output=True,
                text=True,
            )
            return out.returncode == 0 or "already exists" in out.stdout + out.stderr

        _wait(dbd_up, "slurmdbd", log / "slurmdbd.log")
        for add in (["account", ACCOUNT], ["user", "root", f"account={ACCOUNT}"]):
            subprocess.run(
                ["sacctmgr", "-i", "add", *add], env=env, check=True, capture_output=True
            )
        subprocess.run(["slurmctld", "-i"], env=env, check=True)
        subprocess.run(["slurmd"], env=env, check=True)

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%t", check=False)
            return out.strip() == "idle"

        _wait(node_idle, "slurmctld and slurmd", log / "slurmctld.log")
        cluster.start_seconds = time.perf_counter() - start
        print(f"SLURM test cluster up in {cluster.start_seconds:.1f} s ({root})")
        yield cluster
    finally:
        cancel = ["scancel", "--full", f"--partition={PARTITION}"]
        subprocess.run(cancel, env=env, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=30)
        for pid in ("slurmd.pid", "slurmctld.pid", "slurmdbd.pid", "mysql.pid"):
            _stop(root / pid)
        subprocess.run(["munged", "-s", f"--socket={munge}"], capture_output=True)
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)
