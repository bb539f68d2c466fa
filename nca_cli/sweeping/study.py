"""Where a study lives and how it is opened: SQLite in the sweep folder by default, any
SQLAlchemy URL otherwise (PostgreSQL for many workers on many machines).

Creating the tables and the study is serialised (a PostgreSQL advisory lock, a file lock
for SQLite), so any number of workers may start at once on an empty database.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nca_cli.atomic import write_text_atomic
from nca_cli.config import ConfigError

if TYPE_CHECKING:
    import optuna

SQLITE_NAME = "optuna.db"
STUDY_FILE = "study.json"
STORAGE_ENV = "NCA_OPTUNA_STORAGE"
SAMPLERS = ("auto", "tpe", "random", "grid")
PRUNERS = ("median", "none")
DIRECTIONS = ("minimize", "maximize")
_LOCK_KEY = 0x6E6361  # "nca": the PostgreSQL advisory lock around study creation


def storage_url(configured: str | None, sweep_dir: Path) -> str:
    """The configured URL, or a SQLite file inside the sweep folder."""
    if configured:
        return configured
    return f"sqlite:///{(sweep_dir / SQLITE_NAME).resolve()}"


def masked(url: str) -> str:
    """``url`` without its password, for logs and files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _dialect(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


@contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Hold a lock that every ``nca sweep`` on this storage takes to create tables/study."""
    dialect = _dialect(url)
    if dialect == "sqlite":
        import fcntl

        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:":
            yield
            return
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif dialect == "postgresql":
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
        finally:
            engine.dispose()
    else:
        yield


def open_storage(url: str, heartbeat: int = 0) -> optuna.storages.RDBStorage:
    """An RDB storage; with ``heartbeat`` (seconds) running trials that stop beating for
    three intervals (a killed sweep) are marked failed by the next sweep on this study."""
    import optuna

    if _dialect(url) == "sqlite":
        engine: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine = {"pool_pre_ping": True}
    beat: dict[str, Any] = {}
    if heartbeat > 0:
        beat = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
    except (ImportError, ModuleNotFoundError) as err:
        raise ConfigError(
            f"cannot open storage {masked(url)!r}: {err} (PostgreSQL needs a driver: "
            "pip install 'nca-cli[postgres]' and a postgresql+psycopg:// URL)"
        ) from None


def make_pruner(name: str, startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)


def create_study(
    url: str,
    name: str,
    direction: str,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat: int = 0,
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create the study, or load it when it exists (this is how a sweep resumes)."""
    import optuna

    with creation_lock(url):
        storage = open_storage(url, heartbeat)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        )
    existing = study.direction.name.lower()
    if existing != direction:
        raise ConfigError(
            f"study {name!r} exists with direction {existing!r}, not {direction!r}: "
            "choose another study name or the same direction"
        )
    return study, storage


def write_study_file(sweep_dir: Path, info: dict[str, Any]) -> None:
    """``study.json``: what ``nca sweep summarize`` needs to find the study again."""
    write_text_atomic(sweep_dir / STUDY_FILE, json.dumps(info, indent=2) + "\n")


def read_study_file(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep folder of nca sweep (no {STUDY_FILE})")
    return json.loads(path.read_text())


def objective_value(metrics: Any, metric: str) -> float:
    """The objective from what a trial returned: its ``metric`` entry, a finite number."""
    if not isinstance(metrics, dict) or metric not in metrics:
        have = ", ".join(sorted(metrics)) if isinstance(metrics, dict) else repr(metrics)
        raise ValueError(f"the trial returned no metric {metric!r} (it returned: {have})")
    value = float(metrics[metric])
    if not math.isfinite(value):
        raise ValueError(f"the trial's {metric} is {value}")
    return value


def resolve_storage(stored: str, given: str | None) -> str:
    """The storage for ``summarize``: the one given, else the stored one (its password, if
    it was masked, comes from ``NCA_OPTUNA_STORAGE``)."""
    if given:
        return given
    if "***" in stored:
        env = os.environ.get(STORAGE_ENV)
        if not env:
            raise ConfigError(
                f"the study's storage {stored} needs its password: set {STORAGE_ENV} "
                "or pass --storage URL"
            )
        return env
    return stored
