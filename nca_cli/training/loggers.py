"""Run loggers: Weights & Biases (offline by default) or nothing.

Local outputs (metrics JSON lines, images, checkpoints) are written by the trainer
whatever the logger, so a logger failure never costs a run its results.
"""

from __future__ import annotations

import configparser
import logging
import netrc
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from nca_cli.config import ConfigError
from nca_cli.masking import mask_secrets
from nca_cli.training.schema import LoggerConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
# Seconds the start-up check waits for the W&B server (or proxy) to accept a connection.
REACH_TIMEOUT = 10.0
OFFLINE_HINT = (
    "log offline instead with WANDB_MODE=offline (or logger.mode=offline) and upload later "
    "with `wandb sync`, or turn W&B off with logger=none"
)


class WandbError(ConfigError):
    """W&B is set up so that a run could not log to it (checked before any training)."""


def preflight(cfg: LoggerConfig) -> None:
    """Fail at once, before any work, when online W&B logging cannot work: no API key, or
    a server that cannot be reached (a short timeout, so it never hangs)."""
    if cfg.name != "wandb" or cfg.mode != "online":
        return
    base = os.environ.get("WANDB_BASE_URL") or _settings().get("base_url") or DEFAULT_BASE_URL
    if not _has_api_key(base):
        raise WandbError(
            f"W&B is set to log online (logger.mode=online) but no API key for {base} was "
            "found (WANDB_API_KEY, ~/.netrc): run `wandb login` first, or " + OFFLINE_HINT
        )
    target = urlsplit(_proxy(base) or base)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    problem = _unreachable(host, port, REACH_TIMEOUT)
    if problem:
        raise WandbError(
            f"W&B is set to log online but {host}:{port} cannot be reached ({problem}); "
            + OFFLINE_HINT
        )


def _settings() -> dict[str, str]:
    """The ``[default]`` section of W&B's global settings file, if any."""
    folder = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(folder / "settings")
    except configparser.Error:
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _has_api_key(base: str) -> bool:
    """Whether W&B will find credentials for ``base``: the environment, netrc or settings."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if _settings().get("api_key"):
        return True
    path = os.environ.get("NETRC")
    names = (".netrc", "_netrc")
    candidates = [Path(path).expanduser()] if path else [Path.home() / n for n in names]
    host = urlsplit(base).netloc
    for file in candidates:
        try:
            if file.is_file() and netrc.netrc(file).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def _proxy(url: str) -> str | None:
    """The proxy that requests to ``url`` go through, from the environment."""
    scheme = urlsplit(url).scheme
    for name in (f"{scheme}_proxy", "all_proxy"):
        value = os.environ.get(name) or os.environ.get(name.upper())
        if value:
            return value
    return None


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` does not accept a TCP connection within ``timeout`` seconds, or
    None. Name resolution has no timeout of its own, so the attempt runs in a thread."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(str(err) or type(err).__name__)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


class RunLogger(Protocol):
    run_id: str | None

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def image(self, key: str, image: np.ndarray, step: int) -> None: ...

    def video(self, key: str, path: Path, step: int) -> None: ...

    def artifact(self, path: Path, name: str, kind: str) -> None: ...

    def summary(self, values: dict[str, float]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullLogger:
    """``logger=none``: nothing leaves the run folder."""

    run_id: str | None = None

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, key: str, image: np.ndarray, step: int) -> None:
        pass

    def video(self, key: str, path: Path, step: int) -> None:
        pass

    def artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def summary(self, values: dict[str, float]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """One W&B run per training, its files inside the run folder."""

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        config: dict[str, Any],
        run_id: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
    ) -> None:
        os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        self.failed = False  # after a W&B error, W&B is left alone for the rest of the run
        try:
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or run_dir.name,  # evaluations of this run join its group
                tags=list(cfg.tags),
                mode=cfg.mode,  # type: ignore[arg-type]
                dir=str(run_dir),
                name=name or run_dir.name,
                job_type=job_type,
                id=run_id,
                resume="allow" if run_id else None,
                config=mask_secrets(config),
            )
        except Exception as err:  # wandb raises many types (UsageError, CommError, ...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WandbError(f"W&B could not start a run ({first}); " + OFFLINE_HINT) from None
        self.run_id = self.run.id
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.mode, run_dir / "wandb")

    def _safely(self, what: str, call: Callable[[], Any]) -> None:
        """Run a W&B call; its failure is a warning, never the end of the training, whose
        local outputs do not depend on W&B."""
        if self.failed:
            return
        try:
            call()
        except Exception as err:
            self.failed = True
            log.warning(
                "W&B failed while %s (%s: %s); going on without W&B. The run folder keeps "
                "every local output (checkpoints, metrics.jsonl, images).",
                what,
                type(err).__name__,
                err,
            )

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._safely("logging metrics", lambda: self.run.log(values, step=step))

    def image(self, key: str, image: np.ndarray, step: int) -> None:
        assert image.dtype == np.uint8, "W&B shows float images as black: pass uint8"
        self._safely(
            "logging an image", lambda: self.run.log({key: self._wandb.Image(image)}, step=step)
        )

    def video(self, key: str, path: Path, step: int) -> None:
        self._safely(
            "logging a video",
            lambda: self.run.log({key: self._wandb.Video(str(path), format="gif")}, step=step),
        )

    def artifact(self, path: Path, name: str, kind: str) -> None:
        def upload() -> None:
            art = self._wandb.Artifact(name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

        self._safely("logging the checkpoint artifact", upload)

    def summary(self, values: dict[str, float]) -> None:
        self._safely("writing the summary", lambda: self.run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        self.failed = False  # still try to close the run
        self._safely("closing the run", lambda: self.run.finish(exit_code=exit_code))


def make_logger(
    cfg: LoggerConfig,
    run_dir: Path,
    config: dict[str, Any],
    run_id: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
) -> RunLogger:
    """The run's logger; ``name`` and ``job_type`` mark runs that are not a training (a
    k-fold's summary, an evaluation) in W&B."""
    if cfg.name == "none":
        return NullLogger()
    preflight(cfg)
    return WandbLogger(cfg, run_dir, config, run_id, name, job_type)
