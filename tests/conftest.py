"""Test environment: W&B offline, outputs in a temporary folder, ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


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
