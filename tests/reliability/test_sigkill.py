"""SIGKILL at random moments, during checkpoint writes too: the run folder always holds a
checkpoint that loads, ``resume=`` continues from it, and the resumed run ends exactly
where an uninterrupted one does (same weights, pool and logged losses)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reliability_support import TINY, ForkServer, nca, rows, wait_for

from nca_cli.training.checkpoint import load_checkpoint

# A checkpoint every iteration, of a pool big enough (128 samples, 3 MB) that writing it
# takes a while; iterations far beyond what the kills let it reach.
CONFIG = [
    *TINY,
    "pool_size=128",
    "trainer.checkpoint_every=1",
    "trainer.log_every=1",
    "trainer.image_every=5",
    "trainer.iterations=100000",
]


def temporaries(run: Path) -> set[str]:
    """Checkpoint files being written (or left by a write that was killed)."""
    try:
        return {e.name for e in os.scandir(run) if e.name.startswith(".last.ckpt.")}
    except FileNotFoundError:
        return set()


class Processes:
    """The same interface as :class:`ForkServer`, with a fresh ``python -m nca_cli`` per
    command (seconds of start-up each: the slow variant)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> int:
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nca_cli", *argv],
                cwd=cwd,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.proc.pid

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=120)

    def close(self) -> None:
        pass


@pytest.fixture
def forkserver() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def kill_repeatedly(
    launcher: ForkServer | Processes, kills: int, tmp_path: Path, seed: int
) -> dict[str, int]:
    """Start, SIGKILL, resume, SIGKILL, ... ``kills`` times; every other kill lands while a
    checkpoint is being written. Checks the folder after each kill; returns counts."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    log = tmp_path / "nca.log"
    env = {"NCA_OUTPUT_DIR": str(tmp_path / "outputs")}
    counts = {"kills": 0, "during_write": 0, "no_new_checkpoint": 0}
    saved = -1
    for n in range(kills):
        first = n == 0
        argv = ["train", *CONFIG, f"hydra.run.dir={run}"] if first else ["train", f"resume={run}"]
        stale = temporaries(run)
        started = time.monotonic()
        pid = launcher.start(argv, tmp_path, log, env)
        if n % 2:  # kill in the middle of the k-th checkpoint write of this process
            skip = rng.randrange(0, 4)
            seen: set[str] = set()

            def writing(skip: int = skip, seen: set[str] = seen, stale: set[str] = stale) -> bool:
                seen.update(temporaries(run) - stale)
                return len(seen) > skip

            wait_for(writing, 120, f"checkpoint write #{skip + 1} (kill {n})", poll=0.0005)
        else:  # at a random moment: start-up, training, logging, images, checkpoints
            if first:  # the folder is a run folder only once its first checkpoint exists
                wait_for((run / "last.ckpt").is_file, 120, "the first checkpoint")
            time.sleep(rng.uniform(0.0, 2.0))
        os.kill(pid, signal.SIGKILL)
        status = launcher.wait()
        assert status == -signal.SIGKILL, (
            f"kill {n} (seed {seed}): nca ended on its own with {status} after "
            f"{time.monotonic() - started:.1f} s:\n{log.read_text()[-3000:]}"
        )
        counts["kills"] += 1
        counts["during_write"] += bool(temporaries(run) - stale)
        checkpoint = load_checkpoint(run / "last.ckpt")  # always there, always whole
        counts["no_new_checkpoint"] += checkpoint["iteration"] == saved
        assert checkpoint["iteration"] >= saved, f"kill {n} (seed {seed}) lost saved progress"
        saved = checkpoint["iteration"]
    counts["iteration"] = saved
    return counts


def check_resumed_run_is_exact(
    launcher: ForkServer | Processes, tmp_path: Path, counts: dict[str, int]
) -> None:
    """Resume to the end (a real ``nca`` process), then compare with an uninterrupted run."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    total = counts["iteration"] + 3
    done = nca("train", f"resume={run}", f"trainer.iterations={total}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not temporaries(run), "a killed write left its temporary file behind"

    argv = ["train", *CONFIG, f"trainer.iterations={total}", f"hydra.run.dir={reference}"]
    launcher.start(argv, tmp_path, tmp_path / "reference.log", {})
    assert launcher.wait() == 0, (tmp_path / "reference.log").read_text()[-3000:]

    a, b = load_checkpoint(run / "last.ckpt"), load_checkpoint(reference / "last.ckpt")
    assert a["iteration"] == b["iteration"] == total
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    assert torch.equal(a["pool"]["state"], b["pool"]["state"])
    logged, expected = rows(run / "metrics.jsonl"), rows(reference / "metrics.jsonl")
    assert [r["iteration"] for r in logged] == list(range(1, total + 1)), "rows lost or doubled"
    assert [r["loss"] for r in logged] == [r["loss"] for r in expected]
    assert (run / "metrics.json").is_file()


def test_twenty_sigkills_lose_nothing(forkserver: ForkServer, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    counts = kill_repeatedly(forkserver, 20, tmp_path, seed)
    assert counts["during_write"] >= 10, counts  # half the kills hit a checkpoint write
    check_resumed_run_is_exact(forkserver, tmp_path, counts)
    print(f"sigkill (seed {seed}): {counts}")


@pytest.mark.slow
def test_fifty_sigkills_of_fresh_processes_lose_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    launcher = Processes()
    counts = kill_repeatedly(launcher, 50, tmp_path, seed)
    assert counts["during_write"] >= 25, counts
    check_resumed_run_is_exact(launcher, tmp_path, counts)
    print(f"sigkill, fresh processes (seed {seed}): {counts}")
