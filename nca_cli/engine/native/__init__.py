"""Native CPU operators for the fused step, compiled from C++ on first use.

A step on the CPU is about a hundred small tensor operations per batch shard. Called from
Python, each one releases and retakes the interpreter lock, so batch shards on parallel
threads (:mod:`nca_cli.engine.shards`) wait on each other, and the smallest operations
cost several times their arithmetic. Native operators do the same work in one call each:

- ``mlp_forward`` and ``mlp_backward`` (``mlp.cpp``): the update MLP's block loops, with
  the same ATen calls as the Python loops of :class:`nca_cli.engine.fused.StepPlan`;
- ``alive_select`` and ``dead_rows`` (``alive.cpp``): the alive mask, the rows the MLP
  runs on and the cells that die, in one pass over the cells each;
- ``sobel_rows`` and ``sobel_adjoint`` (``sobel.cpp``): the Sobel perception at the
  selected cells only, and its adjoint, instead of whole-grid convolutions, gathers and
  scatters.

In-process A/B on a growing iteration (2 threads), each against the step without it:
0.97x, 0.92x and 0.85x the time. They compile in about 20 s, once: torch keeps the library
under ``TORCH_EXTENSIONS_DIR`` (``~/.cache/torch_extensions`` by default) and rebuilds it
only when a source changes. Where no C++ compiler is found, or with ``NCA_NATIVE=0``, the
fused step runs the same computations as tensor operations.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("mlp.cpp", "alive.cpp", "sobel.cpp")]


def enabled() -> bool:
    """Whether native operators may be used: ``NCA_NATIVE`` is not ``0``."""
    return os.environ.get("NCA_NATIVE", "1") != "0"


def _vector_flags() -> tuple[str, list[str]]:
    """The widest vector instructions torch itself uses on this CPU, as a name for the
    build and the compiler flags: the Sobel kernels take 0.25-0.45x the time with AVX-512
    as with the baseline x86-64 instructions. Each level builds apart, so a
    cache shared by different machines never runs instructions a CPU lacks."""
    level = torch.backends.cpu.get_cpu_capability()
    march = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}.get(level)
    return level.lower(), [f"-march={march}"] if march else []


@functools.cache
def _load() -> Any | None:
    """Compile (when not cached) and load the operators; None, with one warning, when
    they cannot be built."""
    # Its import warns that a CPU-only machine has no CUDA runtime: true and irrelevant.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # imports setuptools: only when needed

    level, flags = _vector_flags()
    log.info("loading the native operators (compiled once, about 20 s)")
    try:
        cpp_extension.load(
            name=f"nca_native_{level}",
            sources=[str(path) for path in SOURCES],
            extra_cflags=["-O3", *flags],
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
