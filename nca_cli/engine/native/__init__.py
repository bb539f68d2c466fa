"""Native CPU operators for the fused step, compiled from C++ on first use.

The update MLP's block loops (``mlp.cpp``) are a few small matrix products per block of
rows. Called from Python, every one of them releases and retakes the interpreter lock, and
batch shards on parallel threads (:mod:`nca_cli.engine.shards`) wait on each other for it;
one native call per step does not. The operators compile in about 8 s, once: torch keeps
the library under ``TORCH_EXTENSIONS_DIR`` (``~/.cache/torch_extensions`` by default) and
rebuilds it only when the source changes. Where no C++ compiler is found, or with
``NCA_NATIVE=0``, the fused step runs the same loops in Python.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mlp.cpp")


def enabled() -> bool:
    """Whether native operators may be used: ``NCA_NATIVE`` is not ``0``."""
    return os.environ.get("NCA_NATIVE", "1") != "0"


@functools.cache
def _load() -> Any | None:
    """Compile (when not cached) and load the operators; None, with one warning, when
    they cannot be built."""
    # Its import warns that a CPU-only machine has no CUDA runtime: true and irrelevant.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # imports setuptools: only when needed

    log.info("loading the native MLP operators (compiled once, about 8 s)")
    try:
        cpp_extension.load(
            name="nca_native",
            sources=[str(SOURCE)],
            extra_cflags=["-O2"],
            is_python_module=False,
        )
    except (OSError, RuntimeError, ImportError) as err:  # no compiler, ninja or headers
        log.warning("native MLP operators unavailable, using the Python loops: %s", err)
        return None
    return torch.ops.nca


def mlp_ops() -> Any | None:
    """The ``torch.ops.nca`` namespace with ``mlp_forward`` and ``mlp_backward`` (CPU),
    or None when native operators are disabled or cannot be built."""
    return _load() if enabled() else None
