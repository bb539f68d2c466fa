"""What a sweep asks of SLURM itself, beside submitit: which job runs this process, how a
job ended (``sacct``), which of a set of jobs are still queued or running (``squeue``), and
cancelling them (``scancel``)."""

from __future__ import annotations

import os
import subprocess

TIMEOUT_S = 60


def current_job() -> str | None:
    """The SLURM job running this process, as ``squeue`` and ``sacct`` name it
    (``<array job>_<task>`` for an array task); None outside SLURM."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _run(*command: str) -> str:
    return subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=TIMEOUT_S
    ).stdout


# sacct states of a job that has not ended yet
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING"}


def job_state(job: str) -> str | None:
    """How ``job`` ended according to ``sacct`` (``CANCELLED by 1000``, ``TIMEOUT``,
    ``PREEMPTED``, ...); None when accounting cannot tell or the job has not ended."""
    try:
        states = _run("sacct", "--noheader", "--parsable2", "-X", "-j", job, "-o", "State")
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [" ".join(line.split()) for line in states.splitlines() if line.strip()]
    if not lines or lines[0].split()[0] in UNFINISHED:
        return None
    return lines[0]


def queued(jobs: set[str]) -> set[str]:
    """Those of ``jobs`` (job ids, array job ids for arrays) that ``squeue`` still lists as
    queued or running; all of them when ``squeue`` cannot be asked."""
    if not jobs:
        return set()
    try:
        listed = _run("squeue", "--noheader", "--array", "--format=%F").split()
    except (OSError, subprocess.SubprocessError):
        return set(jobs)
    return jobs & set(listed)


def cancel(jobs: set[str]) -> str:
    """Cancel ``jobs``; what happened, to print."""
    if not jobs:
        return ""
    listed = " ".join(sorted(jobs))
    try:
        _run("scancel", *sorted(jobs))
    except (OSError, subprocess.SubprocessError) as err:
        return f"could not cancel SLURM jobs {listed}: {err}"
    return f"cancelled SLURM jobs {listed} (queued and running)"
