"""W&B set up wrong (online without an API key, or a server that cannot be reached): a
clear message at start, before any training, suggesting offline mode; W&B failing during a
run never costs the run its local outputs."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_support import TINY, assert_clean_error, rows

from nca_cli.composition import compose
from nca_cli.training import loggers
from nca_cli.training.loggers import WandbError, WandbLogger, preflight
from nca_cli.training.schema import LoggerConfig
from nca_cli.training.trainer import train

WANDB = [*[a for a in TINY if a != "logger=none"], "logger=wandb"]
ONLINE = LoggerConfig(name="wandb", mode="online")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No W&B credentials anywhere: no API key, an empty home without a netrc."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_online_without_api_key_stops_before_training(tmp_path: Path, bare_home: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "online"}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "train", *WANDB, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert_clean_error(out.stderr, "no API key", "wandb login", "WANDB_MODE=offline", "logger=none")
    assert not (run / "last.ckpt").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "wandb").exists()
    assert time.monotonic() - started < 60


def test_unreachable_server_stops_at_once(
    tmp_path: Path, bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    config = compose([*WANDB, "logger.mode=online"])
    started = time.monotonic()
    with pytest.raises(WandbError, match=r"cannot be reached.*WANDB_MODE=offline"):
        train(config, tmp_path / "run")
    assert time.monotonic() - started < 5
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_server_that_never_answers_times_out(
    bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)

    def hang(*args: Any, **kwargs: Any) -> Any:
        time.sleep(30)
        raise OSError("no answer")  # long after the test; the abandoned thread ends quietly

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(loggers, "REACH_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(WandbError, match=r"no answer within 0\.5 s"):
        preflight(ONLINE)
    assert time.monotonic() - started < 2


def test_a_netrc_key_and_a_reachable_server_pass(
    bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        netrc = bare_home / ".netrc"
        netrc.write_text(f"machine 127.0.0.1:{port}\n  login user\n  password {'k' * 40}\n")
        netrc.chmod(0o600)
        preflight(ONLINE)  # no error
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(WandbError, match="no API key"):  # the netrc has another host
            preflight(ONLINE)


def test_wandb_failing_mid_run_keeps_every_local_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb.sdk.wandb_run

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("W&B went away")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    config = compose([*WANDB, "trainer.iterations=6"])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        metrics = train(config, run)
    assert metrics["mse"] > 0
    assert [r["iteration"] for r in rows(run / "metrics.jsonl")] == list(range(1, 7))
    for name in ("last.ckpt", "metrics.json", "final.png", "rollout.gif", "config.yaml"):
        assert (run / name).is_file(), name
    warnings = [r for r in caplog.records if "W&B failed" in r.getMessage()]
    assert len(warnings) == 1 and "W&B went away" in warnings[0].getMessage()


def test_wandb_that_cannot_start_stops_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(WandbError, match=r"could not start a run.*WANDB_MODE=offline"):
        WandbLogger(ONLINE, tmp_path, {})
