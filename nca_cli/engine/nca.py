"""The NCA module: one stochastic, alive-masked residual step, and rollouts of many."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nca_cli.engine.fused import fused_rollout, fused_step, supports
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.perception import build_perception, max3x3
from nca_cli.engine.perception_base import Perception, pad
from nca_cli.engine.schema import ENGINES, ModelConfig
from nca_cli.engine.update import UpdateMLP

log = logging.getLogger(__name__)

# Steps per compiled block of the dense step (see NCA.dense_steps).
DENSE_BLOCK = 8


@dataclass
class StepNoise:
    """The randomness of a block of steps, drawn up front.

    Drawing before the steps run lets gradient checkpointing recompute a block with the
    same masks, and lets a reference implementation share them in tests.
    """

    fire: Tensor | None  # (steps, B, 1, H, W) in {0, 1}, or None when every cell fires
    update: Tensor | None  # (steps, B, U, H, W) additive noise on the update, or None


class NCA(nn.Module):
    """Perceive, update with a per-cell MLP, fire stochastically, mask dead cells.

    States are ``(B, C, H, W)`` at the boundary; inside a rollout they are kept in
    channels-last memory, so the MLP runs as a plain matrix product without copies.
    """

    def __init__(
        self,
        layout: ChannelLayout,
        perception: Perception,
        hidden: list[int],
        activation: str = "relu",
        fire_rate: float = 0.5,
        alive_channel: int | None = None,
        alive_threshold: float = 0.1,
        alive_pool: bool = True,
        padding: str = "zeros",
        update_noise: float = 0.0,
        zero_init: bool = True,
        engine: str = "auto",
        compile_dense: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.perception = perception
        self.update = UpdateMLP(
            perception.out_features, hidden, layout.updated, activation, zero_init
        )
        self.fire_rate = fire_rate
        self.alive_channel = alive_channel
        self.alive_threshold = alive_threshold
        self.alive_pool = alive_pool
        self.padding = padding
        self.update_noise = update_noise
        # Which step runs (ENGINES): auto is the fused step on the CPU, the dense one elsewhere.
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.engine = engine
        self.compile_dense = compile_dense
        self._dense_steps: Callable[..., list[Tensor]] | None = None  # compiled on first use
        self._compiled_for: set[tuple[Any, ...]] = set()  # block lengths and inputs seen
        self.compile_seconds = 0.0  # spent in the dense step's first calls (compiling)
        # supports()'s answer and the options it was given; the reasons logged so far.
        self._fused: tuple[tuple[object, ...], str | None] | None = None
        self._logged: set[str] = set()

    def alive(self, x: Tensor) -> Tensor:
        """Cells with a living neighbour: 3x3 max-pool of the alive channel > threshold;
        without ``alive_pool``, cells whose own alive channel is > threshold."""
        assert self.alive_channel is not None
        a = x[:, self.alive_channel : self.alive_channel + 1]
        if not self.alive_pool:
            return a > self.alive_threshold
        return max3x3(pad(a, 1, self.padding)) > self.alive_threshold

    def draw_noise(self, x: Tensor, steps: int, generator: torch.Generator | None) -> StepNoise:
        """Draw the fire masks and update noise for ``steps`` steps of state ``x``."""
        b, _, h, w = x.shape
        device = generator.device if generator is not None else x.device
        fire = None
        if self.fire_rate < 1.0:
            u = torch.rand((steps, b, 1, h, w), generator=generator, device=device)
            fire = (u <= self.fire_rate).to(x.dtype).to(x.device)
        noise = None
        if self.update_noise > 0:
            shape = (steps, b, self.layout.updated, h, w)
            noise = torch.randn(shape, generator=generator, device=device).to(x.device)
            noise = noise * self.update_noise
        return StepNoise(fire, noise)

    def step_kind(self, x: Tensor) -> str:
        """The step that runs for states like ``x``: ``fused`` (the CPU's fast path, where it
        implements every option of this NCA: :meth:`fused_reason`), ``dense`` (the
        reference step's fixed-shape mathematics, compiled: for accelerators) or
        ``reference``."""
        engine = self.engine
        if engine == "auto":
            engine = "fused" if x.device.type == "cpu" else "dense"
        if engine == "fused" and self.fused_reason(x) is not None:
            return "reference"
        return engine

    def uses_fused_step(self, x: Tensor) -> bool:
        """Whether the fused step runs for states like ``x``."""
        return self.step_kind(x) == "fused"

    def fused_reason(self, x: Tensor) -> str | None:
        """What of this NCA or of states like ``x`` the fused step does not implement
        (:func:`nca_cli.engine.fused.supports`), or None; each reason is logged once.

        Asked again only when an option it reads has changed, so that a step costs one
        comparison; the perception and the update rule count as changed when replaced.
        """
        device = x.device.type
        options = (
            x.dtype,
            device,
            torch.is_autocast_enabled(device),
            self.perception,
            self.update,
            self.update.act,
            self.layout,
            self.fire_rate,
            self.update_noise,
            self.padding,
            self.alive_channel,
            self.alive_pool,
            self.alive_threshold,
        )
        if self._fused is None or self._fused[0] != options:
            cls = type(self)  # a subclass that redefines the step: the reference step
            own = cls.reference_step is NCA.reference_step and cls.alive is NCA.alive
            reason = supports(self, x) if own else f"the step of {cls.__name__!r}"
            self._fused = (options, reason)
        reason = self._fused[1]
        if reason is not None and reason not in self._logged:
            self._logged.add(reason)
            log.info("the fused step does not implement %s: using the reference step", reason)
        return reason

    def step(self, x: Tensor, fire: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """One NCA step; ``fire`` (B, 1, H, W) selects the cells that update.

        Runs the step :meth:`step_kind` chooses: the fused step gives the reference step's
        values and gradients faster and in less memory; the dense step is the reference
        step (compiled over blocks of steps in :meth:`rollout`).
        """
        if self.step_kind(x) == "fused":
            return fused_step(self, x, fire, noise)
        return self.reference_step(x, fire, noise)

    def reference_step(
        self, x: Tensor, fire: Tensor | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """One NCA step, written plainly: the definition that the fused step must match."""
        pre = self.alive(x) if self.alive_channel is not None else None
        features = self.perception(x)
        dx = self.update(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if noise is not None:
            dx = dx + noise
        if fire is not None:
            dx = dx * fire
        fixed = self.layout.fixed
        updated = x[:, fixed:] + dx if fixed else x + dx
        if pre is not None:
            post = self.alive(updated if not fixed else torch.cat([x[:, :fixed], updated], 1))
            updated = updated * (pre & post).to(x.dtype)
        return torch.cat([x[:, :fixed], updated], 1) if fixed else updated

    def _block(
        self,
        x: Tensor,
        fire: Tensor | None,
        noise: Tensor | None,
        n: int,
        trajectory: list[Tensor] | None = None,
    ) -> Tensor:
        """``n`` steps, appending each new state to ``trajectory`` when given: one fused
        rollout where it applies, the dense steps as one compiled block, else step by step."""
        kind = self.step_kind(x)
        if kind == "fused":
            y = fused_rollout(self, x, fire, noise, n, trajectory)
            if y is not None:
                return y
        if kind == "dense":
            states = self.dense_steps(x, fire, noise, n)
            if trajectory is not None:
                trajectory.extend(states)
            return states[-1] if states else x
        for i in range(n):
            x = self.step(x, None if fire is None else fire[i], None if noise is None else noise[i])
            if trajectory is not None:
                trajectory.append(x)
        return x

    def dense_steps(
        self, x: Tensor, fire: Tensor | None, noise: Tensor | None, n: int
    ) -> list[Tensor]:
        """``n`` reference steps with fixed shapes (masks multiply, nothing is selected),
        the states after each: under ``torch.compile`` when ``compile_dense`` is on, as
        blocks of :data:`DENSE_BLOCK` steps and single steps, so that two compiled graphs
        serve rollouts of every length (a graph per length would compile again for each
        length a training draws). Each first compilation is logged with its time (and
        counted in ``compile_seconds``); torch caches the results on disk."""
        if not self.compile_dense:
            return _steps(self, x, fire, noise, n)
        if self._dense_steps is None:
            self._dense_steps = torch.compile(_steps, dynamic=False)
        states: list[Tensor] = []
        done = 0
        while done < n:
            m = DENSE_BLOCK if n - done >= DENSE_BLOCK else 1
            part = self._compiled_block(x, _rows(fire, done, m), _rows(noise, done, m), m)
            states.extend(part)
            x, done = part[-1], done + m
        return states

    def _compiled_block(
        self, x: Tensor, fire: Tensor | None, noise: Tensor | None, m: int
    ) -> list[Tensor]:
        assert self._dense_steps is not None
        key = (m, tuple(x.shape), x.dtype, str(x.device), torch.is_grad_enabled())
        if key in self._compiled_for:
            return self._dense_steps(self, x, fire, noise, m)
        start = time.perf_counter()
        states = self._dense_steps(self, x, fire, noise, m)
        seconds = time.perf_counter() - start
        self._compiled_for.add(key)
        self.compile_seconds += seconds
        log.info(
            "compiled the dense step for blocks of %d step%s (states %s%s) in %.1f s",
            m,
            "" if m == 1 else "s",
            "x".join(map(str, x.shape)),
            ", with gradients" if key[-1] else "",
            seconds,
        )
        return states

    def rollout(
        self,
        x: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        checkpoint_every: int = 0,
        trajectory: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Run ``steps`` steps from ``x``.

        Returns the final state and, when ``trajectory`` is set, the detached states along
        the way (after every step; after every block when checkpointing).
        ``checkpoint_every`` > 0 recomputes blocks of that many steps in the backward pass
        instead of storing their activations: memory for long rollouts.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        noise = self.draw_noise(x, steps, generator)
        states: list[Tensor] = []
        if checkpoint_every <= 0 or not torch.is_grad_enabled():
            x = self._block(x, noise.fire, noise.update, steps, states if trajectory else None)
            return x, [s.detach() for s in states]
        for start in range(0, steps, checkpoint_every):
            n = min(checkpoint_every, steps - start)
            fire = None if noise.fire is None else noise.fire[start : start + n]
            upd = None if noise.update is None else noise.update[start : start + n]
            x = checkpoint(self._block, x, fire, upd, n, use_reentrant=False)
            if trajectory:
                states.append(x.detach())
        return x, states


def _rows(masks: Tensor | None, start: int, n: int) -> Tensor | None:
    return None if masks is None else masks[start : start + n]


def _steps(nca: NCA, x: Tensor, fire: Tensor | None, noise: Tensor | None, n: int) -> list[Tensor]:
    """``n`` reference steps of ``nca`` (the dense step's body, a plain function so that
    ``torch.compile`` traces it whole)."""
    states = []
    for i in range(n):
        x = nca.reference_step(
            x, None if fire is None else fire[i], None if noise is None else noise[i]
        )
        states.append(x)
    return states


def build_nca(
    model: ModelConfig,
    perception: Mapping[str, Any],
    layout: ChannelLayout,
    alive_channel: int | None,
) -> NCA:
    """An NCA for ``layout`` from the ``model`` and ``perception`` config sections."""
    nca = NCA(
        layout,
        build_perception(perception, layout.channels, model.padding),
        hidden=list(model.hidden),
        activation=model.activation,
        fire_rate=model.fire_rate,
        alive_channel=alive_channel if model.alive_mask else None,
        alive_threshold=model.alive_threshold,
        alive_pool=model.alive_pool,
        padding=model.padding,
        update_noise=model.update_noise,
        zero_init=model.zero_init,
        engine=model.engine,
        compile_dense=model.compile,
    )
    if model.init == "glorot":
        glorot_init(nca, keep_zero=model.zero_init)
    return nca


@torch.no_grad()
def glorot_init(nca: NCA, keep_zero: bool) -> None:
    """Keras's default initialisation: Glorot-uniform weights (fans over the kernel's
    receptive field, as Keras counts them) and zero biases, in every convolution and
    linear layer; the zero-initialised last update layer stays zero (``keep_zero``)."""
    last = nca.update.layers[-1]
    for module in nca.modules():
        if not isinstance(module, nn.Conv2d | nn.Linear) or (keep_zero and module is last):
            continue
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
