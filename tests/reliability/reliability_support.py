"""Shared helpers of the reliability suite: nca as a user runs it, in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

HERE = Path(__file__).resolve().parent
# A few-second training on a 20 x 20 grid, one thread (two nca processes share 2 cores).
TINY = ["trainer=smoke", "logger=none", "dataset.padding=4", "threads=1"]


def nca(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``nca ARGS`` in its own process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> Any:
    """``nca ARGS`` started in the background, its output going to ``log``."""
    out = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    poll: float = 0.02,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll until ``condition()`` holds; fail the test after ``timeout`` seconds, or as soon
    as ``proc`` ends (showing the end of its ``log``)."""
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            shown = log.read_text()[-3000:] if log is not None else ""
            pytest.fail(f"nca ended ({proc.returncode}) before {what}:\n{shown}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (metrics.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def assert_clean_error(text: str, *needles: str) -> None:
    """One clear message: every needle in it, and no traceback."""
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


class ForkServer:
    """Runs nca command lines in processes forked from one that imported nca already
    (see forkserver.py): a kill test pays a fork per process instead of a Python start."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "forkserver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout

    def start(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> int:
        """Start ``nca ARGV`` in a child; returns its pid (call :meth:`wait` next)."""
        request = {"argv": argv, "cwd": str(cwd), "env": env, "log": str(log)}
        self.stdin.write(json.dumps(request) + "\n")
        self.stdin.flush()
        return int(json.loads(self.stdout.readline())["pid"])

    def wait(self) -> int:
        """The exit status of the last child (negative: the signal that killed it)."""
        return int(json.loads(self.stdout.readline())["status"])

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


def run_main(main: Callable[[list[str]], None], argv: list[str], capsys: Any) -> tuple[int, str]:
    """A command's ``main(argv)`` in this process (no start-up cost): its exit status and
    everything it printed."""
    argv_before = list(sys.argv)
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.argv = argv_before
    out = capsys.readouterr()
    return code, out.out + out.err
