"""Secrets kept out of what is saved and logged: URL passwords and secret-named values."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# ``scheme://user:password@host``: the password part of a URL.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)([^/\s]+)(?=@)")
# Keys whose values are secrets wherever they appear in a config.
_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key", re.IGNORECASE)


def mask_text(text: str) -> str:
    """``text`` with the passwords of any URLs in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***", text)


def mask_files(paths: Iterable[Path]) -> None:
    """Mask URL passwords in saved text files (Hydra's ``.hydra/*.yaml``, ``multirun.yaml``),
    which Hydra writes from the command line before nca sees the config."""
    from nca_cli.atomic import write_text_atomic

    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if mask_text(text) != text:
            write_text_atomic(path, mask_text(text))


def mask_secrets(node: Any) -> Any:
    """A copy of a config with URL passwords and secret-named values replaced by ``***``,
    for what is saved (config.yaml, checkpoints, W&B) or logged."""
    if isinstance(node, Mapping):
        return {
            k: "***" if _SECRET_KEY.search(str(k)) and isinstance(v, str) and v else mask_secrets(v)
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return [mask_secrets(v) for v in node]
    return mask_text(node) if isinstance(node, str) else node


def _scrub(record: logging.LogRecord) -> bool:
    """A logging filter that masks passwords in URLs."""
    message = record.getMessage()
    masked = mask_text(message)
    if masked != message:
        record.msg, record.args = masked, None
    return True


def hide_secrets() -> None:
    """Mask URL passwords in the log handlers, in the config files Hydra has saved, and in
    ``sys.argv``, which Hydra has parsed already and W&B would record."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    sys.argv[:] = [mask_text(arg) for arg in sys.argv]
    for handler in logging.getLogger().handlers:
        if _scrub not in handler.filters:
            handler.addFilter(_scrub)
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        files += Path(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir).glob("*.yaml")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(str(hydra_cfg.sweep.dir), "multirun.yaml"))
    mask_files(files)
