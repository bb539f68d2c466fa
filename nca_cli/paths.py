"""Where every command writes: ``$NCA_OUTPUT_DIR`` (default ``outputs``), with a folder per
command below it (``train/``, ``sweep/``, ``kfold/``, ``reproduce/``); ``conf/config.yaml``
spells the same root for Hydra's run and sweep folders."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def output_root() -> Path:
    """``$NCA_OUTPUT_DIR``, or ``outputs`` in the working directory when unset or empty."""
    return Path(os.environ.get("NCA_OUTPUT_DIR") or "outputs")


def timestamp() -> str:
    """A new folder's name: now, to the microsecond, so that two folders made in one second
    differ (``conf/config.yaml`` spells the same for Hydra's run and sweep folders)."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
