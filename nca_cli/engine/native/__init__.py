"""Native CPU operators for the fused step, compiled from C++ on first use.

A step on the CPU is about a hundred small tensor operations per batch shard. Called from
Python, each one releases and retakes the interpreter lock, so batch shards on parallel
threads (:mod:`nca_cli.engine.shards`) wait on each other, and the smallest operations
cost several times their arithmetic. Native operators do the same work in one call:

- ``mlp_forward`` and ``mlp_backward`` (``mlp.cpp``): the update MLP's block loops, with
  the same ATen calls as the Python loops of :class:`nca_cli.engine.fused.StepPlan`;
- ``alive_select`` and ``dead_rows`` (``alive.cpp``): the alive mask, the rows the MLP
  runs on and the cells that die, in one pass over the cells each.

They compile in about 10 s, once: torch keeps the library under ``TORCH_EXTENSIONS_DIR``
(``~/.cache/torch_extensions`` by default) and rebuilds it only when a source changes.
Where no C++ compiler is found, or with ``NCA_NATIVE=0``, the fused step runs the same
computations as tensor operations from Python.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("mlp.cpp", "alive.cpp")]


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

    log.info("loading the native operators (compiled once, about 10 s)")
    try:
        cpp_extension.load(
            name="nca_native",
            sources=[str(path) for path in SOURCES],
            extra_cflags=["-O2"],
            is_python_module=False,
        )
    except (OSError, RuntimeError, ImportError) as err:  # no compiler, ninja or headers
        log.warning("native operators unavailable, using tensor operations: %s", err)
        return None
    return torch.ops.nca


def ops() -> Any | None:
    """The ``torch.ops.nca`` namespace of the native operators (CPU), or None when they are
    disabled or cannot be built."""
    return _load() if enabled() else None
