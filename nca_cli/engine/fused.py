"""The fast NCA step: one autograd function with a hand-written backward.

It computes what :meth:`NCA.reference_step` computes (the same mathematics in float32 or
float64, equal up to rounding) and differs in how:

- the update MLP runs only on the cells whose result is used: cells that fire and have a
  living cell within reach of the alive mask. The reference multiplies the others' updates
  by zero, so skipping them changes no value and no gradient; at fire rate 0.5 this halves
  the arithmetic.
- states are channels-last, so the MLP is a matrix product on ``(cells, channels)`` rows,
  run in blocks of rows small enough for the hidden activations to stay in cache.
- the backward pass stores the step's input state, the selected rows and the dead cells
  (about one state per step) and recomputes the rest, except for costly perceptions
  (learned dense convolutions), which autograd runs; then the selected feature rows are
  stored instead.
- the Sobel perception (zero padding) is computed per filter, the identity for free, with a
  hand-written adjoint; the first layer's columns are permuted to this filter-major order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from nca_cli.engine.perception import SobelPerception, max3x3, pad, perception_flops

if TYPE_CHECKING:
    from nca_cli.engine.nca import NCA


def rows(t: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` tensor as ``(B*H*W, C)`` rows, a view when it is channels-last."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def block_rows(nca: NCA) -> int:
    """Rows per block of the MLP: its widest activation block fits in about 1 MB of cache.
    Blocking is 1.7x faster on the CPU than whole-tensor layers, whose activations go
    through memory."""
    widest = max(layer.out_features for layer in nca.update.layers)
    return max(256, 2**18 // widest)


def _hidden(nca: NCA, h: Tensor, first: Tensor) -> list[Tensor]:
    """The input of every layer of the MLP for the rows ``h`` (first-layer weight ``first``)."""
    layers = list(nca.update.layers)  # slicing a ModuleList builds a new module
    relu = nca.update.act is F.relu
    inputs = [h]
    for i, layer in enumerate(layers[:-1]):
        h = torch.addmm(layer.bias, h, (first if i == 0 else layer.weight).t())
        h = h.relu_() if relu else nca.update.act(h)
        inputs.append(h)
    return inputs


def _mlp_forward(nca: NCA, f_rows: Tensor, first: Tensor) -> Tensor:
    """The update MLP on feature rows, in blocks of rows, with first-layer weight ``first``."""
    last = nca.update.layers[-1]
    out = f_rows.new_empty((f_rows.shape[0], last.out_features))
    step = block_rows(nca)
    for s in range(0, f_rows.shape[0], step):
        h = _hidden(nca, f_rows[s : s + step], first)[-1]
        weight = first if len(nca.update.layers) == 1 else last.weight
        torch.addmm(last.bias, h, weight.t(), out=out[s : s + step])
    return out


def _mlp_backward(
    nca: NCA, f_rows: Tensor, grad_out: Tensor, first: Tensor, need: list[bool], need_in: bool
) -> tuple[Tensor | None, list[Tensor | None]]:
    """Gradients of the MLP, its activations recomputed block by block from the feature
    rows: (feature-row gradients if ``need_in``, [dW, db per layer] where ``need``)."""
    layers = list(nca.update.layers)
    relu = nca.update.act is F.relu
    weights = [first, *(layer.weight for layer in layers[1:])]
    grads: list[Tensor | None] = []
    for i, layer in enumerate(layers):
        grads.append(weights[i].new_zeros(weights[i].shape) if need[2 * i] else None)
        grads.append(layer.bias.new_zeros(layer.bias.shape) if need[2 * i + 1] else None)
    grad_in = f_rows.new_empty(f_rows.shape) if need_in else None
    step = block_rows(nca)
    for s in range(0, f_rows.shape[0], step):
        inputs = _hidden(nca, f_rows[s : s + step], first)
        grad = grad_out[s : s + step]
        for i in range(len(layers) - 1, -1, -1):
            gw, gb = grads[2 * i], grads[2 * i + 1]
            if gw is not None:
                gw.addmm_(grad.t(), inputs[i])
            if gb is not None:
                gb += grad.sum(0)
            if i == 0:
                if grad_in is not None:
                    torch.mm(grad, weights[0], out=grad_in[s : s + step])
                break
            grad = torch.mm(grad, weights[i])
            if relu:  # through the activation that produced inputs[i]
                torch.ops.aten.threshold_backward.grad_input(grad, inputs[i], 0.0, grad_input=grad)
            else:
                prev = layers[i - 1]
                with torch.enable_grad():
                    z = torch.addmm(prev.bias, inputs[i - 1], weights[i - 1].t()).requires_grad_()
                    (grad,) = torch.autograd.grad(nca.update.act(z), z, grad)
    return grad_in, grads


def _dilate(nca: NCA, mask: Tensor) -> Tensor:
    """Cells within reach of ``mask`` under the alive mask's pooling: 3x3 (same padding),
    or the cell itself when the alive mask is not pooled."""
    if not nca.alive_pool:
        return mask
    return max3x3(pad(mask.to(torch.float32), 1, nca.padding)) > 0


def _sobel_order(nca: NCA) -> Tensor | None:
    """For a zero-padded Sobel perception, the feature order of the fast path (its column
    ``f * C + c`` is the module's column ``order[f * C + c]``), else None."""
    p = nca.perception
    if not isinstance(p, SobelPerception) or p.padding != "zeros":
        return None
    return p.order


def _sobel_rows(nca: NCA, x: Tensor, idx: Tensor | None) -> Tensor:
    """Sobel features of ``x`` at rows ``idx`` (all when None), filter-major: the state
    itself (the identity filter) and one depthwise convolution per other filter, each
    gathered straight into its columns."""
    b, c, h, w = x.shape
    kernel: Tensor = nca.perception.kernel_filter_major  # type: ignore[assignment]
    n = kernel.shape[0] // c
    x_rows = rows(x)
    out = x.new_empty((b * h * w if idx is None else idx.numel(), n * c))
    for f in range(n):
        part = (
            x_rows if f == 0 else rows(F.conv2d(x, kernel[f * c : (f + 1) * c], None, 1, 1, 1, c))
        )
        if idx is None:
            out[:, f * c : (f + 1) * c] = part
        else:
            torch.index_select(part, 0, idx, out=out[:, f * c : (f + 1) * c])
    return out


def _sobel_adjoint(
    nca: NCA, grad_rows: Tensor, idx: Tensor | None, shape: tuple[int, ...], out: Tensor
) -> None:
    """Add the Sobel perception's adjoint of the filter-major feature gradient at rows
    ``idx`` to the state-gradient rows ``out``: transposed depthwise convolutions."""
    b, c, h, w = shape
    kernel: Tensor = nca.perception.kernel_filter_major  # type: ignore[assignment]
    for f in range(kernel.shape[0] // c):
        part = grad_rows[:, f * c : (f + 1) * c]
        if idx is not None:  # index_add_ is 3x slower than this
            part = part.new_zeros((b * h * w, c)).index_copy_(0, idx, part)
        if f == 0:  # the identity
            out += part
            continue
        grad_f = part.view(b, h, w, c).permute(0, 3, 1, 2)
        weight = kernel[f * c : (f + 1) * c]
        out += rows(F.conv_transpose2d(grad_f, weight, None, 1, 1, 0, c))


class FusedStep(torch.autograd.Function):
    """One NCA step: ``x``, and the perceived ``features`` when autograd computed them.

    With ``features`` None, the perception runs inside and is recomputed in the backward
    pass (cheap perceptions: only the state is stored); ``params`` are then the MLP's and
    the perception's parameters. Otherwise autograd owns the perception and its backward
    (costly perceptions: a recomputation would cost more than it saves) and this function
    stores the selected feature rows.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        nca: NCA,
        x: Tensor,
        features: Tensor | None,
        fire: Tensor | None,
        noise: Tensor | None,
        *params: Tensor,
    ) -> Tensor:
        b, c, h, w = x.shape
        fixed = nca.layout.fixed
        x = x.contiguous(memory_format=torch.channels_last)
        pre = nca.alive(x) if nca.alive_channel is not None else None
        select = None if fire is None else fire > 0
        if pre is not None:
            near = _dilate(nca, pre)
            select = near if select is None else select & near
        idx = None if select is None else select.reshape(-1).nonzero().squeeze(1)
        if idx is not None and idx.numel() == b * h * w:
            idx = None
        recompute = features is None
        perm = _sobel_order(nca) if recompute else None
        first = nca.update.layers[0].weight
        if perm is not None:
            f_rows, first = _sobel_rows(nca, x, idx), first.index_select(1, perm)
        else:
            f_rows = rows(nca.perception(x) if features is None else features)
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        dx = _mlp_forward(nca, f_rows, first)
        if noise is not None:
            noise_rows = rows(noise)
            dx += noise_rows if idx is None else noise_rows.index_select(0, idx)
        if idx is not None:  # scattered into zeros: a serial accumulate is 2x slower
            dx = dx.new_zeros((b * h * w, dx.shape[1])).index_copy_(0, idx, dx)
        out = torch.empty((b, h, w, c), dtype=x.dtype, device=x.device)
        flat, x_rows = out.view(-1, c), rows(x)
        if fixed:
            flat[:, :fixed] = x_rows[:, :fixed]
        upd = torch.add(x_rows[:, fixed:], dx, out=flat[:, fixed:])
        y = out.permute(0, 3, 1, 2)
        dead = None
        if pre is not None:  # zero the dead rows only: usually few, and a full pass is slow
            dead = (~(pre & nca.alive(y))).reshape(-1).nonzero().squeeze(1)
            upd.index_fill_(0, dead, 0.0)
        ctx.nca, ctx.shape, ctx.recompute = nca, (b, c, h, w), recompute
        ctx.save_for_backward(x if recompute else f_rows, idx, dead, perm)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        nca: NCA = ctx.nca
        saved, idx, dead, perm = ctx.saved_tensors
        b, c, h, w = ctx.shape
        fixed = nca.layout.fixed
        need_x = ctx.needs_input_grad[1]
        need = list(ctx.needs_input_grad[5:])
        n_mlp = 2 * len(nca.update.layers)

        # The residual path: the state passes through, times the alive mask.
        grad_x = torch.empty((b, h, w, c), dtype=grad_y.dtype, device=grad_y.device)
        flat = grad_x.view(-1, c)
        flat.copy_(rows(grad_y))
        upd = flat[:, fixed:]
        if dead is not None:
            upd.index_fill_(0, dead, 0.0)
        grad_dx = upd if idx is None else upd.index_select(0, idx)

        # The update MLP, its hidden layers recomputed from the selected feature rows.
        first = nca.update.layers[0].weight
        if perm is not None:
            first = first.index_select(1, perm)
        feats = xd = None
        if perm is not None:
            f_rows = _sobel_rows(nca, saved, idx)
        elif ctx.recompute:
            with torch.enable_grad():
                xd = saved.detach().requires_grad_(need_x)
                feats = nca.perception(xd)
            f_rows = rows(feats.detach())
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        else:
            f_rows = saved
        if perm is not None:
            need_f = need_x
        elif ctx.recompute:
            need_f = need_x or any(need[n_mlp:])
        else:
            need_f = ctx.needs_input_grad[2]
        grad_f_rows, mlp_grads = _mlp_backward(nca, f_rows, grad_dx, first, need[:n_mlp], need_f)
        if perm is not None and mlp_grads[0] is not None:
            mlp_grads[0] = torch.empty_like(mlp_grads[0]).index_copy_(1, perm, mlp_grads[0])
        rest = [None] * (len(need) - n_mlp)  # the perception's parameters, when inputs
        no_grad_f = (None, grad_x.permute(0, 3, 1, 2), None, None, None, *mlp_grads, *rest)
        if grad_f_rows is None:
            return no_grad_f
        if perm is not None:  # the Sobel adjoint
            _sobel_adjoint(nca, grad_f_rows, idx, ctx.shape, flat)
            return no_grad_f
        if idx is None:
            grad_f = grad_f_rows
        else:
            grad_f = grad_f_rows.new_zeros((b * h * w, grad_f_rows.shape[1]))
            grad_f.index_copy_(0, idx, grad_f_rows)
        grad_f = grad_f.view(b, h, w, -1).permute(0, 3, 1, 2)

        # The perception's backward: autograd's own (features given), or autograd on the
        # recomputation.
        if not ctx.recompute:
            return (None, grad_x.permute(0, 3, 1, 2), grad_f, None, None, *mlp_grads)
        p_need = need[n_mlp:]
        assert feats is not None and xd is not None
        params = list(nca.perception.parameters())
        wanted = [p for p, n in zip(params, p_need, strict=True) if n]
        targets = ([xd] if need_x else []) + wanted
        grads = list(torch.autograd.grad(feats, targets, grad_f)) if targets else []
        if need_x:
            grad_x += grads.pop(0).permute(0, 2, 3, 1)
        it = iter(grads)
        p_grads = [next(it) if n else None for n in p_need]
        return (None, grad_x.permute(0, 3, 1, 2), None, None, None, *mlp_grads, *p_grads)


def recompute_perception(nca: NCA) -> bool:
    """Whether the fused step recomputes the perception in its backward pass: when its
    arithmetic is small beside the MLP's (fixed filters, depthwise convolutions)."""
    learned, fixed = perception_flops(nca.perception)
    mlp = sum(2.0 * layer.in_features * layer.out_features for layer in nca.update.layers)
    return learned + fixed <= 0.25 * mlp


def fused_step(nca: NCA, x: Tensor, fire: Tensor | None, noise: Tensor | None) -> Tensor:
    """:meth:`NCA.reference_step`, computed by :class:`FusedStep`."""
    params = [p for layer in nca.update.layers for p in (layer.weight, layer.bias)]
    if recompute_perception(nca) or not torch.is_grad_enabled():
        params += list(nca.perception.parameters())
        return FusedStep.apply(nca, x, None, fire, noise, *params)
    x = x.contiguous(memory_format=torch.channels_last)
    return FusedStep.apply(nca, x, nca.perception(x), fire, noise, *params)
