"""How a process computes: its CPU threads and how its memory allocator keeps freed memory."""

from __future__ import annotations

import ctypes
import functools
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def device_problem(device: str) -> str | None:
    """Why torch ``device`` (``cpu``, ``cuda``, ``cuda:N``) cannot run on this machine, or
    None when it can; torch is imported only for a CUDA device."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return "this machine has no CUDA device (torch.cuda.is_available() is false)"
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def place_device(device: str, slot: int, count: int) -> str:
    """``device`` for the ``slot``-th of parallel jobs (sweep trials, multirun jobs, folds):
    plain ``cuda`` on a machine with ``count`` > 1 GPUs becomes ``cuda:<slot mod count>``,
    so jobs share the GPUs round-robin; anything else (the CPU, a chosen ``cuda:N``) stays."""
    if device != "cuda" or count < 2:
        return device
    return f"cuda:{slot % count}"


def placed_device(device: str, slot: int) -> str:
    """:func:`place_device` with this machine's GPU count (torch imported only for CUDA)."""
    if device != "cuda":
        return device
    import torch

    return place_device(device, slot, torch.cuda.device_count())


def configure_cpu(threads: int | None) -> None:
    """Run torch's CPU operations on ``threads`` threads (its default, all cores, when None
    or 0) and keep freed memory in the process (:func:`keep_freed_memory`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing freed blocks of up to 32 MB back to the system.

    By default it maps large blocks afresh and returns them when freed, so every first touch
    of their pages faults: 11,600 faults, each about 2 µs, per training iteration of the
    growing NCA here. Kept, they are reused with no fault; the peak memory is unchanged.
    Returns whether the allocator took the settings (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl)
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    return bool(mmap_ok and trim_ok)
