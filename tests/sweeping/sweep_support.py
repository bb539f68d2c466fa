"""Helpers shared by the sweep test files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
import pytest

from nca_cli.commands import sweep


def in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``nca sweep`` in this process (no start-up cost); its exit status."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        sweep.main(list(args))
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def sweep_root() -> Path:
    return Path(os.environ["NCA_OUTPUT_DIR"]) / "sweep"


def load(sweep_dir: Path) -> optuna.Study:
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)
