"""The fast NCA step and rollout: autograd functions with hand-written backward passes.

They compute what :meth:`NCA.reference_step` computes (the same mathematics in float32 or
float64, equal up to rounding) for the options that :func:`supports` names (the NCA runs
the reference step for any other), and differ in how:

- the update MLP runs only on the cells whose result is used: cells that fire and have a
  living cell within reach of the alive mask. The reference multiplies the others' updates
  by zero, so skipping them changes no value and no gradient; at fire rate 0.5 this halves
  the arithmetic.
- states are channels-last, so the MLP is a matrix product on ``(cells, channels)`` rows,
  run in blocks of rows small enough for the hidden activations to stay in cache.
- the backward pass stores the selected feature rows, the selected rows and the dead cells,
  and recomputes the hidden activations (they would take 3x the memory). For learned cheap
  perceptions (depthwise convolutions) it stores the input state instead and recomputes the
  features; costly ones (learned dense convolutions) autograd runs itself.
- a perception with a per-cell form (convolutions, Sobel: ``Perception.at_cells``) is
  computed at the selected cells only, from their gathered neighbourhoods, forward and
  backward, when they are few (``GATHER_SHARE``); else on the whole grid.
- the Sobel perception (zero or circular padding) is computed per filter, the identity for
  free, with a hand-written adjoint; the first layer's columns are permuted to this
  filter-major order.
  Storing its feature rows (about 1.5 states per step at fire rate 0.5) instead of the state
  (one) saves recomputing them: 5% of a training iteration for 3% more memory.
- a rollout of cheap perceptions is one autograd node (:class:`FusedRollout`): the weights
  are prepared once, and the parameter gradients accumulate in place over the steps. On
  the CPU it runs batch shards on parallel threads (:mod:`nca_cli.engine.shards`), each
  with its own gradient accumulators, summed in shard order (deterministic).
- on the CPU, native operators (:mod:`nca_cli.engine.native`) run the MLP's block loops,
  the alive mask's selection and the Sobel perception at the selected cells, each in one
  call instead of a dozen tensor operations from Python.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.native import ops
from nca_cli.engine.perception import (
    ConvPerception,
    MultiPerception,
    ResidualPerception,
    SobelPerception,
    max3x3,
    perception_flops,
)
from nca_cli.engine.perception_base import Perception, pad, rows
from nca_cli.engine.perception_learned import AttentionPerception, DeformablePerception
from nca_cli.engine.schema import PADDINGS  # the borders pad() and the native alive mask read
from nca_cli.engine.shards import batch_shards, run_shards
from nca_cli.engine.update import ACTIVATIONS, UpdateMLP


class StepModel(Protocol):
    """What the fused step reads of an NCA (:class:`nca_cli.engine.nca.NCA`): a protocol,
    so that this module does not import the module that imports it."""

    layout: ChannelLayout
    perception: Perception
    update: UpdateMLP
    fire_rate: float
    alive_channel: int | None
    alive_threshold: float
    alive_pool: bool
    padding: str
    update_noise: float

    def alive(self, x: Tensor) -> Tensor: ...


# What the fused step implements, by name (:func:`supports`). States of these types:
DTYPES = (torch.float32, torch.float64)
# Perceptions it calls as they are: pure functions of the state whose ``at_cells`` (where
# they have one) are the grid's features at those cells; the zero-padded Sobel perception
# also has its own filter-major form. Attention and deformable convolution have no per-cell
# form and are perceived on the whole grid.
PERCEIVED = (
    SobelPerception,
    ConvPerception,
    ResidualPerception,
    MultiPerception,
    AttentionPerception,
    DeformablePerception,
)


def supports(nca: StepModel, x: Tensor) -> str | None:
    """None where the fused step computes :meth:`NCA.reference_step` of ``nca`` for states
    like ``x``; else the first option it does not implement, by name.

    A whitelist, so that an option added to the reference step, a new perception class or
    an unexpected value runs the reference step instead of a fused step that ignores it.
    """
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype}"
    if torch.is_autocast_enabled(x.device.type):
        return f"{x.device.type} autocast"
    update = nca.update
    if type(update) is not UpdateMLP:
        return f"update {type(update).__name__!r}"
    if not _known_activation(update.act):
        return f"activation {_name(update.act)!r}"
    if any(type(layer) is not nn.Linear or layer.bias is None for layer in update.layers):
        return "update layers other than biased nn.Linear"
    if type(nca.layout) is not ChannelLayout:
        return f"layout {type(nca.layout).__name__!r}"
    if not _number(nca.fire_rate, 0.0, 1.0):
        return f"fire_rate {nca.fire_rate!r}"
    if not _number(nca.update_noise, 0.0):
        return f"update_noise {nca.update_noise!r}"
    if nca.padding not in PADDINGS:
        return f"padding {nca.padding!r}"
    channel = nca.alive_channel
    if channel is not None:
        if not (isinstance(channel, int) and _number(channel, 0, nca.layout.channels - 1)):
            return f"alive_channel {channel!r}"
        if not isinstance(nca.alive_pool, bool):
            return f"alive_pool {nca.alive_pool!r}"
        if not _number(nca.alive_threshold):
            return f"alive_threshold {nca.alive_threshold!r}"
    return _perception_reason(nca.perception)


def _perception_reason(p: nn.Module) -> str | None:
    """What of perception ``p`` and its parts the fused step does not implement, or None."""
    if type(p) not in PERCEIVED:
        return f"perception {type(p).__name__!r}"
    if isinstance(p, MultiPerception):
        return next((r for part in p.parts if (r := _perception_reason(part))), None)
    if isinstance(p, ResidualPerception):
        return _perception_reason(p.conv)
    padding = getattr(p, "padding", None)
    if padding not in PADDINGS:
        return f"perception padding {padding!r}"
    if isinstance(p, ConvPerception):
        if p.activation is not None and not _known_activation(p.activation):
            return f"perception activation {_name(p.activation)!r}"
        if p.conv.groups not in (1, p.conv.in_channels):  # at_cells: dense or depthwise
            return f"perception convolution groups {p.conv.groups}"
    return None


def _known_activation(act: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``act`` is one of the configurable activations: elementwise, so that the
    fused step may apply it block by block of rows and at selected cells only."""
    return any(act is known for known in ACTIVATIONS.values())


def _name(f: Callable[..., Any]) -> str:
    """A function's name for a message; its repr where it has none (a partial)."""
    return getattr(f, "__name__", repr(f))


def _number(v: object, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether ``v`` is a finite real number (not a bool) in ``[low, high]``."""
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and low <= v <= high
    )


# What a step keeps for its backward pass: its selected feature rows (or its input state,
# for a learned perception recomputed), the selected rows, their inverse and the dead cells.
Saved = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]
SAVED = 4


# Up to this share of the grid's cells selected, the perception gathers the neighbourhoods
# of the selected cells; with more, a convolution of the whole grid is faster (the README's
# benchmark section has the A/B).
GATHER_SHARE = 0.2


def block_rows(nca: StepModel) -> int:
    """Rows per block of the MLP: its widest activation block fits in about 1 MB of cache.
    Blocking is 1.7x faster on the CPU than whole-tensor layers, whose activations go
    through memory."""
    widest = max(layer.out_features for layer in nca.update.layers)
    return max(256, 2**18 // widest)


def _perceive_selected(nca: StepModel, x: Tensor, idx: Tensor | None) -> Tensor | None:
    """The perception's feature rows at the selected cells ``idx`` where few are selected
    and the perception has a per-cell form, else None (the whole grid is perceived)."""
    if idx is None or idx.numel() > GATHER_SHARE * x.numel() // x.shape[1]:
        return None
    return nca.perception.at_cells(x, idx)


def _dilate(nca: StepModel, mask: Tensor) -> Tensor:
    """Cells within reach of ``mask`` under the alive mask's pooling: 3x3 (same padding),
    or the cell itself when the alive mask is not pooled."""
    if not nca.alive_pool:
        return mask
    return max3x3(pad(mask.to(torch.float32), 1, nca.padding)) > 0


SOBEL_PADDINGS = ("zeros", "circular")  # those whose adjoint the fast path writes itself


def _sobel_order(nca: StepModel) -> Tensor | None:
    """For a Sobel perception padded with zeros or circularly, the feature order of the
    fast path (its column ``f * C + c`` is the module's column ``order[f * C + c]``), else
    None."""
    p = nca.perception
    if not isinstance(p, SobelPerception) or p.padding not in SOBEL_PADDINGS:
        return None
    return p.order


def _scatter(padded: Tensor, inv: Tensor | None) -> Tensor:
    """Rows ``padded[1:]`` at the selected cells, zeros elsewhere: ``padded`` has a zero
    first row and ``inv`` maps every cell to its row (0 when not selected). A gather is
    1.5x faster than ``index_copy_`` into zeros."""
    return padded if inv is None else padded.index_select(0, inv)


def _padded_rows(n: int, width: int, like: Tensor, selected: bool) -> tuple[Tensor, Tensor]:
    """An ``(n + 1, width)`` buffer with a zero first row when rows are ``selected`` (for
    :func:`_scatter`), else ``(n, width)``; and its data rows."""
    if not selected:
        buf = like.new_empty((n, width))
        return buf, buf
    buf = like.new_empty((n + 1, width))
    buf[0].zero_()
    return buf, buf[1:]


class StepPlan:
    """What every step of one rollout shares, prepared once: the MLP's weights (the first
    layer's columns in the fast path's feature order), the perception's kind, block size."""

    def __init__(self, nca: StepModel, recompute: bool) -> None:
        self.nca = nca
        self.layers = list(nca.update.layers)  # slicing a ModuleList builds a new module
        self.relu = nca.update.act is F.relu
        self.recompute = recompute
        self.perm = _sobel_order(nca) if recompute else None
        first = self.layers[0].weight.detach()
        if self.perm is not None:
            first = first.index_select(1, self.perm)
        self.weights = [first, *(layer.weight.detach() for layer in self.layers[1:])]
        self.biases = [layer.bias.detach() for layer in self.layers]
        self.block = block_rows(nca)
        self.fixed = nca.layout.fixed
        self.alive = nca.alive_channel is not None
        cpu = first.device.type == "cpu" and first.dtype in (torch.float32, torch.float64)
        native = ops() if cpu else None  # native operators: float32 and float64 on the CPU
        self.native_mlp = native if self.relu else None
        self.native_alive = native if self.alive else None
        self.native_sobel = native if self.perm is not None else None
        self.alive_args = (nca.alive_channel, nca.alive_threshold, nca.alive_pool, nca.padding)
        # a Sobel perception on a grid that wraps around
        self.circular = self.perm is not None and nca.perception.padding == "circular"
        if self.perm is not None:
            kernel: Tensor = nca.perception.kernel_filter_major  # type: ignore[assignment]
            c = nca.layout.channels
            self.filters = [kernel[f * c : (f + 1) * c] for f in range(kernel.shape[0] // c)]
            # The adjoint of a zero-padded (circular) correlation: the zero-padded (circular)
            # correlation with the kernel turned by 180 degrees (oneDNN's is faster than its
            # transposed convolution), for all filters but the identity at once: one gather
            # and one wide depthwise convolution take 0.64x the time of a gather and a
            # convolution per filter.
            self.adjoint = torch.cat([k.flip(-2, -1) for k in self.filters[1:]])
            # For the native operators: (filter, 3x3 tap, channel), channels innermost.
            self.taps = torch.stack([k.reshape(c, 9).t() for k in self.filters[1:]]).contiguous()
        self.p_params = list(nca.perception.parameters()) if recompute else []

    # The update MLP ----------------------------------------------------------------------

    def _hidden(self, h: Tensor) -> list[Tensor]:
        """The input of every layer of the MLP for the rows ``h``."""
        inputs = [h]
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = torch.addmm(bias, h, weight.t())
            h = h.relu_() if self.relu else self.nca.update.act(h)
            inputs.append(h)
        return inputs

    def _mlp_forward(self, f_rows: Tensor, out: Tensor) -> None:
        """The update MLP on feature rows, in blocks of rows, into ``out``."""
        if self.native_mlp is not None:
            self.native_mlp.mlp_forward(f_rows, self.weights, self.biases, out, self.block)
            return
        for s in range(0, f_rows.shape[0], self.block):
            h = self._hidden(f_rows[s : s + self.block])[-1]
            torch.addmm(self.biases[-1], h, self.weights[-1].t(), out=out[s : s + self.block])

    def _mlp_backward(
        self, f_rows: Tensor, grad_out: Tensor, grads: list[Tensor | None], grad_in: Tensor | None
    ) -> None:
        """Accumulate the MLP's parameter gradients into ``grads`` ([dW, db] per layer,
        the first layer's columns in fast order; None where not needed) and write the
        feature-row gradients into ``grad_in`` when given; activations are recomputed block
        by block from the feature rows."""
        n = len(self.layers)
        if self.native_mlp is not None:
            mlp = grads[: 2 * n]
            self.native_mlp.mlp_backward(
                f_rows,
                grad_out,
                self.weights,
                self.biases,
                mlp[0::2],
                mlp[1::2],
                grad_in,
                self.block,
            )
            return
        for s in range(0, f_rows.shape[0], self.block):
            inputs = self._hidden(f_rows[s : s + self.block])
            grad = grad_out[s : s + self.block]
            for i in range(n - 1, -1, -1):
                gw, gb = grads[2 * i], grads[2 * i + 1]
                if gw is not None:
                    gw.addmm_(grad.t(), inputs[i])
                if gb is not None:
                    gb += grad.sum(0)
                if i == 0:
                    if grad_in is not None:
                        torch.mm(grad, self.weights[0], out=grad_in[s : s + self.block])
                    break
                grad = torch.mm(grad, self.weights[i])
                if self.relu:  # through the activation that produced inputs[i]
                    torch.ops.aten.threshold_backward.grad_input(
                        grad, inputs[i], 0.0, grad_input=grad
                    )
                else:
                    with torch.enable_grad():
                        z = torch.addmm(
                            self.biases[i - 1], inputs[i - 1], self.weights[i - 1].t()
                        ).requires_grad_()
                        (grad,) = torch.autograd.grad(self.nca.update.act(z), z, grad)

    # The Sobel perception ----------------------------------------------------------------

    def _sobel_rows(self, x: Tensor, idx: Tensor | None, arena: SavedArena | None) -> Tensor:
        """Sobel features of ``x`` at rows ``idx`` (all when None), filter-major: the state
        itself (the identity filter) and one depthwise convolution per other filter, each
        gathered straight into its columns (natively: computed at those rows only); in
        ``arena`` when given."""
        b, c, h, w = x.shape
        x_rows = rows(x)
        shape = (b * h * w if idx is None else idx.numel(), len(self.filters) * c)
        out = x.new_empty(shape) if arena is None else arena.empty(shape, x.dtype)
        if self.native_sobel is not None:
            self.native_sobel.sobel_rows(x, self.taps, idx, self.circular, out)
            return out
        padded = pad(x, 1, "circular") if self.circular else x
        margin = 0 if self.circular else 1
        for f, kernel in enumerate(self.filters):
            part = x_rows if f == 0 else rows(F.conv2d(padded, kernel, None, 1, margin, 1, c))
            if idx is None:
                out[:, f * c : (f + 1) * c] = part
            else:
                torch.index_select(part, 0, idx, out=out[:, f * c : (f + 1) * c])
        return out

    def _sobel_adjoint(
        self, grad_rows: Tensor, idx: Tensor | None, inv: Tensor | None, grad_x: Tensor
    ) -> None:
        """Add the Sobel perception's adjoint of the filter-major feature gradient
        ``grad_rows`` of rows ``idx`` to the state gradient ``grad_x`` (``(B, H, W, C)``):
        natively, from those rows only; else scattered to the grid (``grad_rows`` has a
        zero first row when rows were selected, ``inv`` the cells' rows) and one depthwise
        convolution with the turned filters."""
        if self.native_sobel is not None:
            grad_state = grad_x.permute(0, 3, 1, 2)
            self.native_sobel.sobel_adjoint(grad_rows, self.taps, idx, self.circular, grad_state)
            return
        b, h, w, c = grad_x.shape
        out = grad_x.view(-1, c)
        out += _scatter(grad_rows[:, :c], inv)  # the identity
        k = self.adjoint.shape[0]
        grad_f = _scatter(grad_rows[:, c:], inv).view(b, h, w, k).permute(0, 3, 1, 2)
        if self.circular:
            turned = rows(F.conv2d(pad(grad_f, 1, "circular"), self.adjoint, None, 1, 0, 1, k))
        else:
            turned = rows(F.conv2d(grad_f, self.adjoint, None, 1, 1, 1, k))
        for f in range(0, k, c):
            out += turned[:, f : f + c]

    # One step ----------------------------------------------------------------------------

    def _select(self, x: Tensor, fire: Tensor | None) -> tuple[Tensor | None, ...]:
        """The alive map of ``x`` (None without an alive mask), the rows the MLP runs on
        (cells that fire and have a living cell within reach) and every cell's 1-based
        position among them (0 when not selected); both None when every cell is selected."""
        nca = self.nca
        b, _, h, w = x.shape
        pre = idx = inv = None
        if self.native_alive is not None:
            pre, idx, inv = self.native_alive.alive_select(x, *self.alive_args, fire)
        else:
            pre = nca.alive(x) if self.alive else None
            select = fire
            if pre is not None:
                near = _dilate(nca, pre)
                select = near if select is None else select & near
            if select is not None:
                flags = select.reshape(-1)
                idx = flags.nonzero().squeeze(1)
                inv = flags.cumsum(0, dtype=torch.int32).mul_(flags)
        if idx is not None and idx.numel() == b * h * w:
            idx = inv = None
        return pre, idx, inv

    def forward(
        self,
        x: Tensor,
        fire: Tensor | None,
        noise: Tensor | None,
        features: Tensor | None = None,
        arena: SavedArena | None = None,
        selection: tuple[Tensor | None, ...] | None = None,
    ) -> tuple[Tensor, Saved]:
        """One step from ``x`` (channels-last) with fire mask ``fire`` (bool): the new
        state and what the backward pass needs (in ``arena`` when given, but for ``x``
        and the given ``features``). ``features`` are the perceived features when autograd
        owns the perception: ``(B, F, H, W)``, or ``(n, F)`` at the cells ``selection``
        selects (:meth:`_select`'s, made once by the caller when given)."""
        nca, fixed = self.nca, self.fixed
        b, c, h, w = x.shape
        pre, idx, inv = self._select(x, fire) if selection is None else selection
        if self.perm is not None:
            f_rows = self._sobel_rows(x, idx, arena)
        elif features is not None and features.dim() == 2:
            f_rows = features  # perceived at the selected cells only
        elif features is None and (selected := _perceive_selected(nca, x, idx)) is not None:
            f_rows = selected
        else:
            f_rows = rows(nca.perception(x) if features is None else features)
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        n = b * h * w if idx is None else idx.numel()
        padded, dx = _padded_rows(n, self.layers[-1].out_features, x, idx is not None)
        self._mlp_forward(f_rows, dx)
        if noise is not None:
            noise_rows = rows(noise)
            dx += noise_rows if idx is None else noise_rows.index_select(0, idx)
        keep_rows = features is not None or self.perm is not None
        if arena is None or keep_rows:
            out = torch.empty((b, h, w, c), dtype=x.dtype, device=x.device)
        else:  # the next step keeps this state
            out = arena.empty((b, h, w, c), x.dtype)
        flat, x_rows = out.view(-1, c), rows(x)
        if fixed:
            flat[:, :fixed] = x_rows[:, :fixed]
        upd = torch.add(x_rows[:, fixed:], _scatter(padded, inv), out=flat[:, fixed:])
        y = out.permute(0, 3, 1, 2)
        dead = None
        if pre is not None:  # zero the dead rows only: usually few, and a full pass is slow
            if self.native_alive is not None:
                dead = self.native_alive.dead_rows(pre, y, *self.alive_args)
            else:
                dead = (~(pre & nca.alive(y))).reshape(-1).nonzero().squeeze(1)
            upd.index_fill_(0, dead, 0.0)
        if arena is not None:  # the native Sobel adjoint needs no positions
            inv = None if self.native_sobel is not None else arena.keep(inv)
            idx, dead = arena.keep(idx), arena.keep(dead)
        return y, (f_rows if keep_rows else x, idx, inv, dead)

    def backward(
        self,
        saved: Sequence[Tensor | None],
        grad_y: Tensor,
        grads: list[Tensor | None],
        need_x: bool,
        need_features: bool = False,
        feature_rows: bool = False,
    ) -> tuple[Tensor | None, Tensor | None]:
        """The backward pass of one step: accumulates the parameter gradients into
        ``grads`` (MLP, then the recomputed perception's parameters) and returns the
        gradients of the input state (if ``need_x``) and of the given features (if
        ``need_features``; autograd-owned perceptions), as the selected rows when the
        features were given as rows (``feature_rows``)."""
        data, idx, inv, dead = saved
        assert data is not None
        nca, fixed = self.nca, self.fixed
        b, c, h, w = grad_y.shape
        n_mlp = 2 * len(self.layers)

        # The residual path: the state passes through, times the alive mask.
        grad_x = torch.empty((b, h, w, c), dtype=grad_y.dtype, device=grad_y.device)
        flat = grad_x.view(-1, c)
        flat.copy_(rows(grad_y))
        upd = flat[:, fixed:]
        if dead is not None:
            upd.index_fill_(0, dead, 0.0)
        grad_dx = upd if idx is None else upd.index_select(0, idx)

        # The update MLP, its hidden layers recomputed from the selected feature rows.
        feats = xd = None
        if self.recompute and self.perm is None:
            with torch.enable_grad():
                xd = data.detach().requires_grad_(need_x)
                feats = nca.perception(xd)
            f_rows = rows(feats.detach())
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        else:
            f_rows = data
        p_need = [g is not None for g in grads[n_mlp:]]
        if self.perm is not None:
            need_f = need_x
        elif self.recompute:
            need_f = need_x or any(p_need)
        else:
            need_f = need_features
        padded = grad_f_rows = None
        if need_f:
            n, width = f_rows.shape
            scatter = inv is not None and self.native_sobel is None
            padded, grad_f_rows = _padded_rows(n, width, f_rows, scatter)
        self._mlp_backward(f_rows, grad_dx, grads, grad_f_rows)
        grad_state = grad_x.permute(0, 3, 1, 2) if need_x else None
        if padded is None:
            return grad_state, None
        if self.perm is not None:  # the Sobel adjoint
            self._sobel_adjoint(padded, idx, inv, grad_x)
            return grad_state, None
        if feature_rows:
            return grad_state, grad_f_rows
        grad_f = _scatter(padded, inv).view(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.recompute:
            return grad_state, grad_f

        # Autograd on the recomputed perception.
        assert feats is not None and xd is not None
        wanted = [p for p, need in zip(self.p_params, p_need, strict=True) if need]
        targets = ([xd] if need_x else []) + wanted
        results = list(torch.autograd.grad(feats, targets, grad_f)) if targets else []
        if need_x:
            grad_x += results.pop(0).permute(0, 2, 3, 1)
        it = iter(results)
        for i, need in enumerate(p_need):
            if need:
                acc = grads[n_mlp + i]
                assert acc is not None
                acc += next(it)
        return grad_state, None

    # Parameter gradients -----------------------------------------------------------------

    def params(self) -> list[Tensor]:
        """The parameters whose gradients the backward pass computes, in its order."""
        mlp = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        return mlp + self.p_params

    def grad_buffers(self, needed: Sequence[bool]) -> list[Tensor | None]:
        """Zeroed accumulators for the parameters that need gradients (fast order)."""
        shapes = [w.shape for pair in zip(self.weights, self.biases, strict=True) for w in pair]
        shapes += [p.shape for p in self.p_params]
        like = self.weights[0]
        return [like.new_zeros(s) if need else None for s, need in zip(shapes, needed, strict=True)]

    def finish(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """The accumulated gradients in the parameters' own order."""
        if self.perm is not None and grads[0] is not None:
            grads[0] = torch.empty_like(grads[0]).index_copy_(1, self.perm, grads[0])
        return grads


class FusedStep(torch.autograd.Function):
    """One NCA step of a costly perception, from ``x`` and its perceived ``features``
    (of every cell, or the rows of the cells that ``selection`` selects): autograd owns the
    perception and its backward (a recomputation would cost more than it saves), this
    function the rest; ``params`` are the MLP's."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        plan: StepPlan,
        x: Tensor,
        features: Tensor,
        fire: Tensor | None,
        noise: Tensor | None,
        selection: tuple[Tensor | None, ...] | None,
        *params: Tensor,
    ) -> Tensor:
        y, saved = plan.forward(x, fire, noise, features, selection=selection)
        ctx.plan = plan
        ctx.feature_rows = features.dim() == 2
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        plan: StepPlan = ctx.plan
        grads = plan.grad_buffers(ctx.needs_input_grad[6:])
        need_x, need_f = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_x, grad_f = plan.backward(
            ctx.saved_tensors, grad_y, grads, need_x, need_f, ctx.feature_rows
        )
        return (None, grad_x, grad_f, None, None, None, *plan.finish(grads))


class ChunkPool:
    """The CPU chunks of :class:`SavedArena`, kept for the next rollouts: a chunk is free
    again once no tensor views it (its graph was freed after the backward pass). At 32 MB,
    glibc maps each chunk apart from its heaps (:func:`nca_cli.compute.keep_freed_memory`
    keeps smaller blocks), and reused, it is mapped and faulted in once per process.

    Measured on the growing benchmark: peak memory 857-864 MB in four runs, against
    885-912 MB with 8 MB chunks from the heap and no reuse."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunks: list[Tensor] = []

    def take(self, nbytes: int) -> Tensor:
        """A free chunk of ``nbytes`` (new if none is free), as a view that marks it used."""
        with self.lock:
            for chunk in self.chunks:
                if chunk.numel() == nbytes and _unviewed(chunk):
                    return chunk[:]
            chunk = torch.empty(nbytes, dtype=torch.uint8)
            self.chunks.append(chunk)
            return chunk[:]


def _unviewed(chunk: Tensor) -> bool:
    """Whether no tensor but ``chunk`` itself uses its memory (torch counts the references
    to a storage; the one asked for here is the second). False where torch cannot tell."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return count is not None and count(chunk.untyped_storage()._cdata) == 2


@functools.cache
def _chunk_pool(pid: int) -> ChunkPool:
    """The chunk pool of process ``pid`` (a forked child starts its own)."""
    return ChunkPool()


class SavedArena:
    """Memory for what the steps of a rollout keep for its backward pass (feature rows or
    states, selected rows, positions, dead cells), for one batch shard: consecutive pieces
    of large chunks, on the CPU reused from rollout to rollout (:class:`ChunkPool`).

    Allocated one by one, these hundreds of tensors sit between each step's temporaries
    and fragment the heap: at the end of a growing iteration's forward pass, malloc held
    81 MB of free but resident memory. Pages of a chunk that are never written take no
    memory."""

    CHUNK = 32 << 20  # bytes: glibc maps blocks this large apart from its heaps
    ALIGN = 64  # bytes: cache lines, and any dtype's alignment

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.chunk = torch.empty(0, dtype=torch.uint8, device=device)
        self.used = 0

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``, contiguous."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self.used + nbytes > self.chunk.numel():
            size = max(self.CHUNK, nbytes)
            if self.device.type == "cpu":
                self.chunk = _chunk_pool(os.getpid()).take(size)
            else:  # CUDA's caching allocator reuses memory itself
                self.chunk = torch.empty(size, dtype=torch.uint8, device=self.device)
            self.used = 0
        start = self.used
        self.used = start + -(-nbytes // self.ALIGN) * self.ALIGN
        return self.chunk[start : start + nbytes].view(dtype).view(shape)

    def keep(self, t: Tensor | None) -> Tensor | None:
        """A contiguous copy of ``t`` in the arena, or None."""
        return None if t is None else self.empty(t.shape, t.dtype).copy_(t)


def _run(
    plan: StepPlan,
    x: Tensor,
    fire: Tensor | None,
    noise: Tensor | None,
    steps: int,
    trajectory: list[Tensor] | None,
    saved: list[list[Tensor | None]] | None,
) -> tuple[Tensor, list[slice]]:
    """``steps`` steps from ``x`` on batch shards in parallel (:mod:`nca_cli.engine.shards`):
    the final state and the shards. Appends every new state to ``trajectory`` when given,
    and to ``saved``, when given, one list per shard of what each step's backward needs."""
    x = x.contiguous(memory_format=torch.channels_last)
    select = None if fire is None else fire > 0
    shards = batch_shards(x)

    def part(s: slice) -> tuple[Tensor, list[Tensor], list[Tensor | None]]:
        y = x[s]
        states: list[Tensor] = []
        kept: list[Tensor | None] = []
        arena = SavedArena(x.device) if saved is not None else None
        for i in range(steps):
            fire_i = None if select is None else select[i, s]
            y, needs = plan.forward(y, fire_i, None if noise is None else noise[i, s], None, arena)
            if saved is not None:
                kept.extend(needs)
            if trajectory is not None:
                states.append(y)
        return y, states, kept

    results = run_shards(part, shards)
    if len(results) == 1:
        y, states, _ = results[0]
    else:
        y = torch.cat([r[0] for r in results]).contiguous(memory_format=torch.channels_last)
        states = [torch.cat([r[1][i] for r in results]) for i in range(len(results[0][1]))]
    if trajectory is not None:
        trajectory.extend(states)
    if saved is not None:
        saved.extend(r[2] for r in results)
    return y, shards


class FusedRollout(torch.autograd.Function):
    """Steps of an NCA whose perception the backward pass recomputes, as one autograd
    node: no graph node, weight preparation or gradient accumulation per step; on the
    CPU, batch shards run on parallel threads."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        plan: StepPlan,
        x: Tensor,
        fire: Tensor | None,
        noise: Tensor | None,
        steps: int,
        trajectory: list[Tensor] | None,
        *params: Tensor,
    ) -> Tensor:
        saved: list[list[Tensor | None]] = []
        y, shards = _run(plan, x, fire, noise, steps, trajectory, saved)
        ctx.plan, ctx.shards = plan, shards
        ctx.save_for_backward(*(t for kept in saved for t in kept))
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        plan: StepPlan = ctx.plan
        shards: list[slice] = ctx.shards
        saved = ctx.saved_tensors
        per_shard = len(saved) // len(shards)
        needed = ctx.needs_input_grad[6:]
        need_input = ctx.needs_input_grad[1]

        def part(k: int) -> tuple[Tensor | None, list[Tensor | None]]:
            grads = plan.grad_buffers(needed)
            mine = saved[k * per_shard : (k + 1) * per_shard]
            grad: Tensor | None = grad_y[shards[k]]
            for i in range(per_shard // SAVED - 1, -1, -1):
                assert grad is not None
                need_x = i > 0 or need_input
                grad, _ = plan.backward(mine[i * SAVED : (i + 1) * SAVED], grad, grads, need_x)
            return grad, grads

        results = run_shards(part, range(len(shards)))
        grads = results[0][1]
        for _, more in results[1:]:
            for acc, g in zip(grads, more, strict=True):
                if acc is not None and g is not None:
                    acc += g
        grad_x = None
        if need_input:
            parts = [g for g, _ in results if g is not None]
            grad_x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (None, grad_x, None, None, None, None, *plan.finish(grads))


def recompute_perception(nca: StepModel) -> bool:
    """Whether the fused step recomputes the perception in its backward pass: when its
    arithmetic is small beside the MLP's (fixed filters, depthwise convolutions)."""
    learned, fixed = perception_flops(nca.perception)
    mlp = sum(2.0 * layer.in_features * layer.out_features for layer in nca.update.layers)
    return learned + fixed <= 0.25 * mlp


def fused_step(nca: StepModel, x: Tensor, fire: Tensor | None, noise: Tensor | None) -> Tensor:
    """:meth:`NCA.reference_step`: a fused rollout of one step, or :class:`FusedStep` for
    a costly perception."""
    one = [None if t is None else t.unsqueeze(0) for t in (fire, noise)]
    y = fused_rollout(nca, x, one[0], one[1], 1, None)
    if y is not None:
        return y
    plan = StepPlan(nca, recompute=False)
    x = x.contiguous(memory_format=torch.channels_last)
    select = None if fire is None else fire > 0
    selection = plan._select(x, select)
    features = _perceive_selected(nca, x, selection[1])
    if features is None:  # perceived on the whole grid; the step selects the rows
        features = nca.perception(x)
    return FusedStep.apply(plan, x, features, select, noise, selection, *plan.params())


def fused_rollout(
    nca: StepModel,
    x: Tensor,
    fire: Tensor | None,
    noise: Tensor | None,
    steps: int,
    trajectory: list[Tensor] | None,
) -> Tensor | None:
    """``steps`` steps from ``x`` with the fire masks and noise of each (first dimension),
    computed by :class:`FusedRollout`; None when the perception is costly, to be run
    step by step."""
    grad = torch.is_grad_enabled()
    if grad and not recompute_perception(nca):
        return None
    plan = StepPlan(nca, recompute=True)
    params = plan.params()
    if not grad or not (x.requires_grad or any(p.requires_grad for p in params)):
        return _run(plan, x, fire, noise, steps, trajectory, None)[0]
    return FusedRollout.apply(plan, x, fire, noise, steps, trajectory, *params)
