"""The training loop: sample, roll out, score, step, guard, checkpoint, log.

It sees a task through the :class:`~nca_cli.tasks.base.Task` contract only. All randomness
after model initialisation flows from one seeded generator (and, on an accelerator, one on
the device for the rollouts) saved in every checkpoint, so an interrupted run resumed from
its checkpoint ends bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from nca_cli.atomic import remove_stale_temporaries, write_text_atomic
from nca_cli.compute import configure_cpu
from nca_cli.datasets.splits import save_splits
from nca_cli.engine.pool import Batch, SamplePool, renew
from nca_cli.images import save_gif, save_png, tile, upscale
from nca_cli.masking import mask_secrets
from nca_cli.training.build import build_run
from nca_cli.training.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    CheckpointError,
    CheckpointWriter,
    environment,
)
from nca_cli.training.finetune import freeze, load_initial_weights
from nca_cli.training.interrupts import Interrupted, stop_requests
from nca_cli.training.loggers import RunLogger, make_logger, preflight
from nca_cli.training.optim import build_optimizer, build_scheduler, treat_gradients
from nca_cli.training.regeneration import regeneration_check
from nca_cli.training.schema import parse_run_config

log = logging.getLogger(__name__)


# Called with (iteration, logged row) every trainer.log_every iterations; may raise to stop.
Report = Callable[[int, dict[str, float]], None]


class RunFailed(RuntimeError):
    """The run cannot go on as configured; its reason goes to error.txt beside the last
    good checkpoint."""


class DivergenceError(RunFailed):
    """Training produced non-finite numbers or killed every cell."""


class OutOfMemory(RunFailed):
    """The device ran out of memory; the message names what to lower."""


@dataclass
class StepResult:
    """One optimiser step's figures, left on the state's device until :meth:`Trainer.read`
    copies those of several steps to the host at once."""

    iteration: int
    loss: Tensor  # 0-d
    grad_norm: Tensor  # 0-d, before the gradients were treated
    alive: Tensor | None  # 0-d bool: a cell alive after the rollout (None: no alive mask)
    cotrained: dict[str, Tensor]  # the task's co-trained modules' figures (a critic's loss)
    state: Tensor  # the batch's final states, detached


def snapshot_name(iteration: int) -> str:
    """The file name of the checkpoint kept at ``iteration`` (``trainer.snapshots``)."""
    return f"iter_{iteration:06d}.ckpt"


def draw_steps(low: int, high: int, generator: torch.Generator) -> int:
    """A rollout length uniform in ``[low, high]``, both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class Trainer:
    """Everything a run needs, built from a resolved config dictionary."""

    def __init__(self, config: dict[str, Any], run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.run = run = parse_run_config(config)
        configure_cpu(run.threads)
        self.device = torch.device(run.device)
        self.grid: tuple[int, ...] = ()  # of the last batch, for the out-of-memory message
        self.task, nca = build_run(run)
        self.nca = nca.to(self.device)
        # Modules the task trains beside the NCA (a GAN's discriminator), or None.
        self.cotrained = self.task.build_cotrained(self.device)
        t = run.trainer
        self.params = freeze(self.nca, t.trainable)
        self.init: dict[str, Any] | None = None  # the run this one started from (init=)
        self.optimizer = build_optimizer(self.params, t.optimizer)
        self.scheduler = build_scheduler(self.optimizer, t.schedule, t.iterations)
        self.generator = torch.Generator().manual_seed(run.seed)
        # The rollouts' fire masks and update noise, drawn where the state lives: on an
        # accelerator a generator of its own (nothing is drawn on the CPU and copied over).
        self.step_generator = (
            self.generator
            if self.device.type == "cpu"
            else torch.Generator(device=self.device).manual_seed(run.seed)
        )
        pool_cfg = self.task.config.pool
        self.pool = (
            SamplePool(self._to_device(self.task.fresh(pool_cfg.size, self.generator)))
            if pool_cfg.size
            else None
        )
        self.iteration = 0
        self.saved_iteration: int | None = None  # of the checkpoint on disk
        self.writer = CheckpointWriter()
        # Training time (the loop with its checks and writes) up to the checkpoint it
        # resumed from, and where this session's began: a resumed run reports its whole cost.
        self.earlier_seconds = 0.0
        self.session_start: float | None = None
        self.regen_seconds = 0.0  # spent in regeneration checks, every session
        self.regen_last: tuple[float, float] | None = None  # the last check's (end, seconds)
        self.regen_skipped = False
        self.wandb_id: str | None = None
        self.history: list[float] = []
        # How often the steps' figures are read (and checked) at the latest: on an
        # accelerator every log_every iterations, each read being a host sync; on the CPU,
        # where a read costs nothing, every iteration.
        self.read_every = 1 if self.device.type == "cpu" else t.log_every

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "iteration": self.iteration,
            "model": self.nca.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pool": self.pool.state_dict() if self.pool is not None else None,
            "cotrained": self.cotrained.state_dict() if self.cotrained is not None else None,
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                **self._device_rng(),
            },
            "config": mask_secrets(self.config),
            "environment": environment(),
            "wandb_id": self.wandb_id,
            "history": list(self.history),
            "init": self.init,
            "seconds": self.training_seconds(),
            "regen_check_seconds": self.regen_seconds,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.iteration = int(payload["iteration"])
        self.nca.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.pool is not None:
            self.pool.load_state_dict(self._to_device(payload["pool"]))
        if self.cotrained is not None:
            self.cotrained.load_state_dict(payload["cotrained"])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        saved = payload["rng"].get("device")
        if self.step_generator is not self.generator and saved is not None:
            if saved["type"] == self.device.type:  # exact on the same kind of device
                self.step_generator.set_state(saved["state"])
            else:
                log.info("the step randomness was drawn on %s: a new stream here", saved["type"])
        self.wandb_id = payload.get("wandb_id")
        self.history = list(payload.get("history", []))
        self.init = payload.get("init")
        self.earlier_seconds = float(payload.get("seconds", 0.0))
        self.regen_seconds = float(payload.get("regen_check_seconds", 0.0))

    def training_seconds(self) -> float:
        """The run's training time so far, over all its sessions."""
        now = time.perf_counter()
        return self.earlier_seconds + (now - self.session_start if self.session_start else 0.0)

    def _device_rng(self) -> dict[str, Any]:
        if self.step_generator is self.generator:
            return {}
        return {"device": {"type": self.device.type, "state": self.step_generator.get_state()}}

    def save(self) -> Path:
        """Write ``last.ckpt`` now, and wait for it."""
        self.save_in_background()
        self.writer.wait()
        return self.run_dir / CHECKPOINT_NAME

    def save_in_background(self, name: str = CHECKPOINT_NAME) -> None:
        """Copy this iteration's checkpoint off the training's tensors and write it to
        ``name`` while training goes on (see :class:`CheckpointWriter`)."""
        iteration = self.iteration

        def written() -> None:
            if name == CHECKPOINT_NAME:
                self.saved_iteration = iteration

        self.writer.submit(self.run_dir / name, self.state_dict(), written)

    def _to_device(self, batch: Batch) -> Batch:
        """A batch made on the host (fresh samples), on the run's device: on an accelerator
        through pinned memory, a copy that does not wait for the device."""
        if self.device.type == "cpu":
            return batch
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- one iteration -----------------------------------------------------------------
    def _batch(self) -> tuple[Tensor | None, Batch]:
        b = self.run.trainer.batch_size
        if self.pool is None:
            return None, self._to_device(self.task.fresh(b, self.generator))
        # drawn where the pool lives, as are the damage masks (no copy from the host)
        idx, batch = self.pool.sample(b, self.step_generator)
        pool = self.task.config.pool
        losses = None
        if pool.ranked:
            with torch.no_grad():
                losses = self.task.rank_loss(batch["state"], batch)
        batch = renew(
            batch,
            losses,
            pool,
            fresh=lambda n: self._to_device(self.task.fresh(n, self.generator)),
            mutate=lambda part: self.task.mutate(part, self.generator),
            wipe_from=self.task.layout.fixed,
            generator=self.step_generator,
        )
        return idx, batch

    def train_step(self) -> StepResult:
        """One optimiser step. Its figures stay on the device (see :meth:`read`): a
        diverged step is caught when they are read, before anything is saved."""
        t = self.run.trainer
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if t.bf16 else nullcontext()
        )
        for _ in range(t.grad.accumulate):
            idx, batch = self._batch()
            self.grid = tuple(batch["state"].shape[-2:])
            steps = draw_steps(t.steps.min, t.steps.max, self.generator)
            with autocast:
                state, _ = self.nca.rollout(
                    batch["state"], steps, self.step_generator, t.gradient_checkpointing
                )
                loss = self.task.loss(state, batch).mean()
            (loss / t.grad.accumulate).backward()
            total = total + loss.detach().float() / t.grad.accumulate
            if self.pool is not None and idx is not None:
                batch["state"] = state.detach()
                self.pool.commit(idx, batch)
        grad_norm = treat_gradients(self.params, t.grad)
        self.optimizer.step()
        self.scheduler.step()
        cotrained = (
            self.cotrained.update(state.detach(), batch) if self.cotrained is not None else {}
        )
        self.iteration += 1
        alive = self.nca.alive(state).any() if self.nca.alive_channel is not None else None
        return StepResult(self.iteration, total, grad_norm, alive, cotrained, state.detach())

    def read(self, results: list[StepResult]) -> dict[str, float]:
        """The figures of ``results`` (the steps since the last read) copied to the host at
        once, one sync however many steps; their losses join the history. Raises
        :class:`DivergenceError` naming the first step whose loss or gradient norm is not
        finite, or after which every cell was dead. Returns the last step's figures."""
        if not results:
            return {}
        last = results[-1]
        columns = [
            torch.stack([r.loss for r in results]),
            torch.stack([r.grad_norm.to(r.loss.device) for r in results]),
            torch.stack([r.loss.new_ones(()) if r.alive is None else r.alive for r in results]),
            *(v.detach().reshape(1).expand(len(results)) for v in last.cotrained.values()),
        ]
        values = torch.stack([c.float() for c in columns]).cpu().tolist()
        for n, result in enumerate(results):
            loss, grad_norm, alive = values[0][n], values[1][n], values[2][n]
            at = result.iteration
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"training diverged at iteration {at}: the loss is {loss}. "
                    f"{self._likely_cause()}"
                )
            if not math.isfinite(grad_norm):
                raise DivergenceError(
                    f"training diverged at iteration {at}: the gradient norm is {grad_norm}. "
                    f"{self._likely_cause()}"
                )
            if not alive:
                raise DivergenceError(
                    f"every cell is dead after iteration {at}: the alive mask (channel "
                    f"{self.nca.alive_channel} > {self.nca.alive_threshold}) removed the "
                    "whole state. Likely cause: a model.alive_threshold too high for the seed, "
                    "or updates that drive the alpha channel down (try a lower lr, or a lower "
                    "model.alive_threshold)"
                )
            self.history.append(loss)
        cotrained = {k: row[-1] for k, row in zip(last.cotrained, values[3:], strict=True)}
        return {"loss": values[0][-1], "grad_norm": values[1][-1], **cotrained}

    def _likely_cause(self) -> str:
        t = self.run.trainer
        lr = self.scheduler.get_last_lr()[0]
        untreated = not t.grad.normalize and not t.grad.clip_norm
        return (
            f"Likely cause: the learning rate ({lr:.3g}) is too high for this model and blew "
            "the weights up: try a lower lr"
            + (
                ", or trainer.grad.normalize=true or trainer.grad.clip_norm=1.0"
                if untreated
                else ""
            )
        )

    def _train_step(self) -> StepResult:
        """:meth:`train_step`, running out of memory a failure naming what to lower."""
        try:
            return self.train_step()
        except torch.OutOfMemoryError as err:
            t = self.run.trainer
            first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
            grid = "x".join(str(n) for n in self.grid)
            raise OutOfMemory(
                f"{self.device} ran out of memory at iteration {self.iteration + 1} (batch "
                f"{t.batch_size}, grid {grid}, up to {t.steps.max} steps): lower "
                "trainer.batch_size, the grid, or trainer.steps, or set "
                "trainer.gradient_checkpointing=N to recompute blocks of N steps in the "
                f"backward pass instead of storing them ({first}).\nTraining stopped; "
                f"{self._kept()}; "
                "resume it with the lower values"
            ) from None

    def _read(self, results: list[StepResult]) -> dict[str, float]:
        """:meth:`read`, a divergence naming the checkpoint that is kept."""
        try:
            return self.read(results)
        except DivergenceError as err:
            raise DivergenceError(f"{err}.\nTraining stopped; {self._kept()}") from None

    def _kept(self) -> str:
        """Which checkpoint a failed run leaves to resume from."""
        self.writer.join()  # a write in flight lands first
        if self.saved_iteration is None:
            return "no checkpoint had been written yet"
        path = self.run_dir / CHECKPOINT_NAME
        return f"the last good checkpoint, of iteration {self.saved_iteration}, is kept in {path}"

    # -- evaluation and images -----------------------------------------------------------
    @torch.no_grad()
    def _grow(self, state: Tensor, steps: int) -> Tensor:
        return self.nca.rollout(state.to(self.device), steps, self.step_generator)[0]

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Task metrics on ``split``, grown for the longest training rollout."""
        t = self.run.trainer
        return self.task.evaluate(self._grow, split, t.batch_size, t.steps.max)

    def showcase(self) -> Tensor:
        """Final states of the first validation batch (of training samples when the split
        holds none back, e.g. ``dataset.val_fraction=0``), for pictures."""
        t = self.run.trainer
        split = "val" if self.task.has_split("val") else "train"
        batch = next(iter(self.task.evaluation_batches(split, t.batch_size)))
        return self._grow(batch["state"], t.steps.max)

    @torch.no_grad()
    def rollout_frames(self, steps: int) -> list[np.ndarray]:
        batch = self._to_device(self.task.fresh(1, self.generator))
        _x, states = self.nca.rollout(batch["state"], steps, self.step_generator, trajectory=True)
        return [upscale(self.task.render(s)[0], 4) for s in [batch["state"], *states]]

    def regen_check(self, logger: RunLogger, step: int) -> dict[str, float]:
        """The ``nca eval`` protocol on a few samples (``trainer.regen_check``), logged as
        ``regen/*`` and to regen.jsonl with its seconds; its own seeded generator leaves the
        training's random stream alone."""
        cfg = self.run.trainer.regen_check
        start = time.perf_counter()
        values = regeneration_check(self.task, self.nca, cfg, self.run.seed, self.device)
        end = time.perf_counter()
        seconds = end - start
        self.regen_seconds += seconds
        self.regen_last = (end, seconds)
        logger.metrics({f"regen/{k}": v for k, v in values.items()}, step=step)
        with (self.run_dir / "regen.jsonl").open("a") as f:
            f.write(json.dumps({"iteration": step, **values, "seconds": seconds}) + "\n")
        return values

    def regen_due(self, step: int) -> bool:
        """Whether the periodic check at ``step`` runs: not while the last one took more
        than ``trainer.regen_check.max_share`` of the training time since it ended (said
        once in the log, with the settings that change it)."""
        cfg = self.run.trainer.regen_check
        if cfg.max_share == 0 or self.regen_last is None:
            return True
        end, seconds = self.regen_last
        if seconds <= cfg.max_share * (time.perf_counter() - end):
            return True
        if not self.regen_skipped:
            self.regen_skipped = True
            log.info(
                "regeneration check skipped at iteration %d: the last took %.1f s, more than "
                "trainer.regen_check.max_share=%g of the training since; checks resume once "
                "it is under that share (max_share=0 checks every %d iterations regardless)",
                step,
                seconds,
                cfg.max_share,
                cfg.every,
            )
        return False

    # -- the loop ------------------------------------------------------------------------
    def fit(
        self,
        logger: RunLogger,
        stop: threading.Event,
        progress: bool = True,
        report: Report | None = None,
    ) -> dict[str, float]:
        """Train to ``trainer.iterations``, or until ``stop`` is set (see
        :func:`stop_requests`); ``report`` sees every logged row (a sweep's pruner raises
        from it to stop a weak trial)."""
        t = self.run.trainer
        images = self.run_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        metrics_file = self.run_dir / "metrics.jsonl"
        if stop.is_set() and self.iteration < t.iterations:  # set during the set-up
            raise Interrupted(  # the checkpoint on disk is this iteration's
                f"interrupted before iteration {self.iteration + 1}; checkpoint kept. "
                f"Resume with:\n  nca train resume={self.run_dir}"
            )
        self.session_start = time.perf_counter()
        unread: list[StepResult] = []  # steps whose figures are still on the device
        progressing = _progress(progress, t.iterations, self.iteration)
        with self.writer.landing(), progressing as advance:
            while self.iteration < t.iterations:
                result = self._train_step()
                unread.append(result)
                i = self.iteration
                # One look at the stop request per iteration: a request that comes later is
                # seen at the next one, so a stop always follows its checkpoint.
                stopping = stop.is_set()
                check = t.regen_check
                logged = i % t.log_every == 0 or i == t.iterations
                imaged = i % t.image_every == 0
                saved = i % t.checkpoint_every == 0 or i == t.iterations or stopping
                checked = (
                    check.enabled
                    and check.every > 0
                    and i % check.every == 0
                    and not (i == t.iterations or stopping)
                    and self.regen_due(i)
                )
                snapshot = i in t.snapshots
                busy = logged or imaged or saved or checked or snapshot
                if not (busy or i % self.read_every == 0):
                    advance(None)
                    continue
                figures = self._read(unread)  # nothing is shown or saved before this
                unread = []
                if logged:
                    row = {
                        "loss": figures["loss"],
                        "log10_loss": math.log10(max(figures["loss"], 1e-12)),
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": figures["grad_norm"],
                        **{k: v for k, v in figures.items() if k not in ("loss", "grad_norm")},
                    }
                    logger.metrics(row, step=i)
                    with metrics_file.open("a") as f:
                        f.write(json.dumps({"iteration": i, **row}) + "\n")
                    if report is not None:
                        report(i, row)
                if imaged:
                    grid = upscale(tile(self.task.render(result.state)), 2)
                    save_png(images / f"iter_{i:06d}.png", grid)
                    logger.image("batch", grid, step=i)
                if saved:
                    self.save_in_background()
                if snapshot:
                    self.save_in_background(snapshot_name(i))
                if checked:
                    self.regen_check(logger, i)
                advance(figures["loss"])
                if stopping:
                    raise Interrupted(
                        f"interrupted at iteration {i}; checkpoint saved. Resume with:\n"
                        f"  nca train resume={self.run_dir}"
                    )
        return self.finish(logger, self.training_seconds())

    def finish(self, logger: RunLogger, seconds: float) -> dict[str, float]:
        """Final evaluation, images, GIF and checkpoint artifact; ``seconds`` of training
        over every session go to metrics.json."""
        t = self.run.trainer
        metrics = self.evaluate("val") if self.task.has_split("val") else {}
        if self.task.has_split("test"):
            metrics.update({f"test/{k}": v for k, v in self.evaluate("test").items()})
        tail = self.history[-10:]
        metrics["train_loss"] = float(np.mean(tail)) if tail else float("nan")
        if t.regen_check.enabled:
            regen = self.regen_check(logger, self.iteration)
            metrics.update({f"regen_{k}": v for k, v in regen.items()})
        final = upscale(tile(self.task.render(self.showcase())), 4)
        save_png(self.run_dir / "final.png", final)
        logger.image("final", final, step=self.iteration)
        frames = self.rollout_frames(2 * t.steps.max)
        save_gif(self.run_dir / "rollout.gif", frames)
        logger.video("rollout", self.run_dir / "rollout.gif", step=self.iteration)
        logger.metrics({f"final/{k}": v for k, v in metrics.items()}, step=self.iteration)
        logger.artifact(self.run_dir / CHECKPOINT_NAME, f"model-{self.run_dir.name}", "model")
        summary = {
            "iteration": self.iteration,
            "seconds": seconds,
            **({"regen_check_seconds": self.regen_seconds} if t.regen_check.enabled else {}),
            **metrics,
        }
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        return metrics


@contextmanager
def _progress(enabled: bool, total: int, done: int) -> Iterator[Any]:
    """A rich progress bar with the loss and iterations per second."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[rate]:.2f} it/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("train", total=total, completed=done, loss=float("nan"), rate=0.0)
        last = time.perf_counter()

        def advance(loss: float | None) -> None:
            """One iteration more; ``loss`` where the step's figures were read."""
            nonlocal last
            now = time.perf_counter()
            rate = 1.0 / max(now - last, 1e-9)
            last = now
            shown = {} if loss is None else {"loss": loss}
            bar.update(task, advance=1, rate=rate, **shown)

        yield advance


def train(
    config: dict[str, Any],
    run_dir: Path,
    checkpoint: dict[str, Any] | None = None,
    report: Report | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Train a run into ``run_dir``; continue from ``checkpoint`` when given.

    Returns the final metrics, the objective a sweep optimises; ``report(iteration, row)``
    is called with every logged row of training metrics (intermediate values of a sweep).
    ``stop`` comes from a caller's :func:`stop_requests`; without one, train installs its
    own.
    """
    if stop is None:
        with stop_requests(run_dir) as own:
            return train(config, run_dir, checkpoint, report, own)
    preflight(parse_run_config(config).logger)  # W&B set up wrong: say so before any work
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)  # of writes cut short by a crash
    trainer = Trainer(config, run_dir)
    if checkpoint is not None:
        try:
            trainer.load_state_dict(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"the checkpoint of {run_dir} does not fit the model and task its config "
                f"builds ({type(err).__name__}: {first})"
            ) from None
        trainer.saved_iteration = trainer.iteration
        log.info("resuming %s at iteration %d", run_dir, trainer.iteration)
    elif trainer.run.init is not None:
        trainer.init = load_initial_weights(trainer.nca, trainer.run.init)
        log.info(
            "starting from the weights of %s (iteration %d), training %s",
            trainer.init["path"],
            trainer.init["iteration"],
            trainer.run.trainer.trainable,
        )
    for name in ("metrics.jsonl", "regen.jsonl"):  # rows written after the checkpoint
        _trim_rows(run_dir / name, trainer.iteration)
    write_text_atomic(
        run_dir / "config.yaml", yaml.safe_dump(mask_secrets(config), sort_keys=False)
    )
    if trainer.task.splits is not None:
        save_splits(run_dir / "splits.json", trainer.task.splits)
    log.info(
        "task %s, %d parameters (%d trained), grid %s, run folder %s",
        trainer.task.config.name,
        sum(p.numel() for p in trainer.nca.parameters()),
        sum(p.numel() for p in trainer.params),
        tuple(trainer.task.fresh(1, torch.Generator())["state"].shape[-2:]),
        run_dir,
    )
    logger = make_logger(trainer.run.logger, run_dir, config, trainer.wandb_id)
    trainer.wandb_id = logger.run_id
    if trainer.saved_iteration is None:
        trainer.save()  # from now on the folder always holds a checkpoint to resume from
    exit_code = 1
    try:
        metrics = trainer.fit(logger, stop, trainer.run.trainer.progress, report)
        exit_code = 0
        return metrics
    finally:
        logger.finish(exit_code)


def _trim_rows(path: Path, iteration: int) -> None:
    """Keep the JSON lines of ``path`` up to ``iteration``: a resumed run writes the later
    ones again, and a crash may have cut the last line short."""
    if not path.is_file():
        return
    kept = []
    lines = path.read_text().splitlines()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("iteration") if isinstance(row, dict) else None
        if isinstance(step, int) and step <= iteration:
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
