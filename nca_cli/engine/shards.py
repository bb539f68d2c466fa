"""Batch shards run side by side on CPU threads, each with its own share of the cores.

An NCA step on the CPU is many small operations (gathers, masks, small matrix products).
Split over the cores one operation at a time (torch's intra-op threads), each ends in a
barrier, and those below torch's grain size run on one core while the others wait. The
cells of different batch items never interact within a step, so shards of the batch, each
on its own thread with its own intra-op threads, keep every core busy without barriers.
On 2 cores this takes a training iteration of the growing NCA 0.84x the time, and of the
segmentation case 0.87x (in-process A/B against one shard).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

S = TypeVar("S")
T = TypeVar("T")


def batch_shards(x: Tensor) -> list[slice]:
    """Contiguous batch slices of ``x``, one per worker: as many as this thread's intra-op
    threads and the batch allow, on the CPU; one slice (the whole batch) elsewhere."""
    batch = x.shape[0]
    workers = min(torch.get_num_threads(), batch) if x.device.type == "cpu" else 1
    if workers < 2:
        return [slice(0, batch)]
    edges = [batch * i // workers for i in range(workers + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@functools.cache
def _pool(workers: int, threads_each: int, pid: int) -> ThreadPoolExecutor:
    """``workers`` threads that each run torch with ``threads_each`` intra-op threads, in
    process ``pid`` (a forked child has none of its parent's threads).

    torch's thread count is per thread, but setting it also sets the default of threads
    that have not yet run torch, so the caller's count is set back once the workers exist.
    """
    own = torch.get_num_threads()

    def init() -> None:
        torch.get_num_threads()  # start from this thread's default first, or its first
        torch.set_num_threads(threads_each)  # operation would reset the count

    pool = ThreadPoolExecutor(workers, thread_name_prefix="nca-shard", initializer=init)
    started = threading.Barrier(workers)  # each waits for the others: one task per thread
    for future in [pool.submit(started.wait) for _ in range(workers)]:
        future.result()
    torch.set_num_threads(own)
    return pool


def run_shards(fn: Callable[[S], T], shards: Sequence[S]) -> list[T]:
    """``fn`` of every shard (a batch slice, or anything naming one), on parallel threads
    when there are several, in order.

    Grad mode and inference mode are per thread, so each worker runs in the caller's.
    """
    if len(shards) == 1:
        return [fn(shards[0])]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def task(shard: S) -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(shard)

    threads = torch.get_num_threads()
    pool = _pool(len(shards), max(1, threads // len(shards)), os.getpid())
    return list(pool.map(task, shards))
