"""Self-describing, atomically written checkpoints that load with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitive values: model, optimiser, scheduler,
pool, RNG states, iteration, the resolved config, package versions and the git SHA, so
any run can be rebuilt and continued from it alone.
"""

from __future__ import annotations

import platform
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import nca_cli
from nca_cli.atomic import write_atomic

FORMAT = 1
CHECKPOINT_NAME = "last.ckpt"
# What every checkpoint holds, whoever reads it (training resumes and evaluations).
REQUIRED: dict[str, type | tuple[type, ...]] = {"iteration": int, "model": dict, "config": dict}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or from an incompatible version."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(payload, f))


def host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the host, detached from the training's own
    tensors (the pool and the optimiser's moments change in place at the next step). From
    an accelerator the copies go to pinned memory without waiting for them to land."""
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(v) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if value.device.type == "cpu":
        return value.detach().clone()
    pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    return pinned.copy_(value.detach(), non_blocking=True)


class CheckpointWriter:
    """Writes checkpoints on a thread of its own, so training goes on while a file is
    serialised, synced and renamed into place. One write at a time, in order: the next one
    waits for the last. A failed write is raised by the next :meth:`wait`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, payload: dict[str, Any], done: Callable[[], None]) -> None:
        """Copy ``payload`` off the training's tensors now and write it to ``path`` in the
        background; ``done`` is called once the file is in place."""
        self.wait()
        copied = host_copy(payload)
        # Copies from a GPU were queued on its stream: the write waits for this event.
        landed = torch.cuda.Event() if torch.cuda.is_initialized() else None
        if landed is not None:
            landed.record()

        def write() -> None:
            try:
                if landed is not None:
                    landed.synchronize()  # the copies to pinned memory are complete
                save_checkpoint(path, copied)
                done()
            except BaseException as err:  # handed to the training thread by wait()
                self._error = err

        self._thread = threading.Thread(target=write, name=f"write {path.name}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the write in flight, if any (its failure is kept for :meth:`wait`)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait(self) -> None:
        """Wait for the write in flight; raise its failure."""
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @contextmanager
    def landing(self) -> Iterator[None]:
        """Every write submitted in the block has landed when it ends, however it ends (a
        failed write raised over the block's own error)."""
        try:
            yield
        finally:
            self.wait()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (no code execution) and check its format."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or hostile files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: {first} (the file is truncated, corrupt, "
            "or not an nca checkpoint)"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path} is not an nca checkpoint (it has no format number)")
    if payload["format"] != FORMAT:
        env = payload.get("environment")
        writer = env.get("nca") if isinstance(env, dict) else None
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format']!r}"
            + (f" (written by nca {writer})" if writer else "")
            + f", but this nca ({nca_cli.__version__}) reads format {FORMAT}: load it with the "
            "nca version that wrote it"
        )
    missing = [k for k, kind in REQUIRED.items() if not isinstance(payload.get(k), kind)]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete nca checkpoint: it lacks {', '.join(missing)}"
        )
    return payload


def git_sha() -> str | None:
    """The commit of the nca source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(nca_cli.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions and source revision recorded in every checkpoint."""
    import numpy

    return {
        "nca": nca_cli.__version__,
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
    }
