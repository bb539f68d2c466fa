"""The fast NCA step: one autograd function with a hand-written backward.

It computes what :meth:`NCA.reference_step` computes (the same mathematics, float32 or
float64, equal up to rounding) and differs in how:

- the update MLP runs only on the cells whose result is used: cells that fire and have a
  living cell within reach of the alive mask. The reference multiplies the others' updates
  by zero, so skipping them changes no value and no gradient; at fire rate 0.5 this halves
  the arithmetic.
- states are channels-last, so the MLP is a plain matrix product on ``(cells, channels)``
  rows, and the residual add and the alive masks happen in place on those rows.
- for cheap perceptions the backward pass stores only the step's input state, the selected
  rows and the alive mask (about one state per step) and recomputes the rest; for costly
  ones (learned dense convolutions) autograd runs the perception and this function stores
  the selected feature rows.
- the Sobel perception (zero padding) runs as a multiplier-1 depthwise convolution of the
  channels repeated filter-major, the first layer's columns permuted to match, with a
  hand-written adjoint; that is about 3x faster than the interleaved grouped convolution.
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


def _mlp_forward(nca: NCA, h: Tensor, first: Tensor, keep: bool) -> tuple[Tensor, list[Tensor]]:
    """The update MLP on rows ``h`` with first-layer weight ``first``; with ``keep``, also
    the input of every layer."""
    layers = nca.update.layers
    relu = nca.update.act is F.relu
    inputs = []
    for i, layer in enumerate(layers):
        if keep:
            inputs.append(h)
        weight = first if i == 0 else layer.weight
        h = torch.addmm(layer.bias, h, weight.t())
        if i < len(layers) - 1:
            h = h.relu_() if relu else nca.update.act(h)
    return h, inputs


def _mlp_backward(
    nca: NCA, inputs: list[Tensor], grad: Tensor, first: Tensor, need: list[bool], need_in: bool
) -> tuple[Tensor | None, list[Tensor | None]]:
    """Gradients of the MLP from its layer inputs: (input rows if ``need_in``, [dW, db per
    layer])."""
    layers = nca.update.layers
    relu = nca.update.act is F.relu
    grads: list[Tensor | None] = []
    for i in range(len(layers) - 1, -1, -1):
        h = inputs[i]
        grads[:0] = [
            torch.mm(grad.t(), h) if need[2 * i] else None,
            grad.sum(0) if need[2 * i + 1] else None,
        ]
        if i == 0 and not need_in:
            return None, grads
        grad = torch.mm(grad, first if i == 0 else layers[i].weight)
        if i > 0:  # through the activation that produced h
            if relu:
                torch.ops.aten.threshold_backward.grad_input(grad, h, 0.0, grad_input=grad)
            else:
                prev = layers[i - 1]
                weight = first if i == 1 else prev.weight
                with torch.enable_grad():
                    z = torch.addmm(prev.bias, inputs[i - 1], weight.t()).requires_grad_()
                    (grad,) = torch.autograd.grad(nca.update.act(z), z, grad)
    return grad, grads


def _dilate(nca: NCA, mask: Tensor) -> Tensor:
    """Cells within the 3x3 reach of ``mask``, under the same padding as the alive mask."""
    return max3x3(pad(mask.to(torch.float32), 1, nca.padding)) > 0


def _sobel_order(nca: NCA) -> Tensor | None:
    """For a zero-padded Sobel perception, the feature order ``perm`` of the fast path:
    its column ``f * C + c`` is the module's column ``c * n_filters + f``."""
    p = nca.perception
    if not isinstance(p, SobelPerception) or p.padding != "zeros":
        return None
    n = p.out_features // p.channels
    return torch.arange(p.out_features, device=p.kernel.device).view(p.channels, n).t().flatten()


def _sobel_rows(nca: NCA, x: Tensor, perm: Tensor) -> Tensor:
    """Sobel features of ``x`` as rows, filter-major: the state repeated once per filter
    (a contiguous copy) and one multiplier-1 depthwise convolution."""
    b, c, h, w = x.shape
    n = perm.numel() // c
    rep = rows(x).unsqueeze(1).expand(-1, n, c).reshape(b, h, w, n * c).permute(0, 3, 1, 2)
    kernel = nca.perception.kernel[perm]  # type: ignore[index]
    return rows(F.conv2d(rep, kernel, padding=1, groups=n * c))


def _sobel_adjoint(nca: NCA, grad_f: Tensor, perm: Tensor, out: Tensor) -> None:
    """Add the Sobel perception's adjoint of filter-major ``grad_f`` (B, F, H, W) to the
    rows ``out``: a transposed depthwise convolution, then the sum over the filters."""
    c = out.shape[1]
    kernel = nca.perception.kernel[perm]  # type: ignore[index]
    g = rows(F.conv_transpose2d(grad_f, kernel, padding=1, groups=perm.numel()))
    for f in range(perm.numel() // c):
        out += g[:, f * c : (f + 1) * c]


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
            f_rows, first = _sobel_rows(nca, x, perm), first[:, perm]
        else:
            f_rows = rows(nca.perception(x) if features is None else features)
        if idx is not None:
            f_rows = f_rows.index_select(0, idx)
        dx, _ = _mlp_forward(nca, f_rows, first, keep=False)
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
        mask = None
        if pre is not None:
            mask = pre & nca.alive(y)
            upd *= rows(mask.to(x.dtype))
        ctx.nca, ctx.shape, ctx.recompute = nca, (b, c, h, w), recompute and perm is None
        # The Sobel adjoint needs no state: keep its selected features rather than x.
        ctx.save_for_backward(x if ctx.recompute else f_rows, idx, mask, perm)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        nca: NCA = ctx.nca
        saved, idx, mask, perm = ctx.saved_tensors
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
        if mask is not None:
            upd *= rows(mask.to(grad_y.dtype))
        grad_dx = upd if idx is None else upd.index_select(0, idx)

        # The update MLP, its hidden layers recomputed from the selected feature rows.
        first = nca.update.layers[0].weight
        if perm is not None:
            first = first[:, perm]
        feats = xd = None
        if ctx.recompute:
            with torch.enable_grad():
                xd = saved.detach().requires_grad_(need_x)
                feats = nca.perception(xd)
            f_rows = rows(feats.detach())
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        else:
            f_rows = saved
        _, inputs = _mlp_forward(nca, f_rows, first, keep=True)
        if perm is not None:
            need_f = need_x
        elif ctx.recompute:
            need_f = need_x or any(need[n_mlp:])
        else:
            need_f = ctx.needs_input_grad[2]
        grad_f_rows, mlp_grads = _mlp_backward(nca, inputs, grad_dx, first, need[:n_mlp], need_f)
        if perm is not None and mlp_grads[0] is not None:
            mlp_grads[0] = torch.empty_like(mlp_grads[0]).index_copy_(1, perm, mlp_grads[0])
        rest = [None] * (len(need) - n_mlp)  # the perception's parameters, when inputs
        no_grad_f = (None, grad_x.permute(0, 3, 1, 2), None, None, None, *mlp_grads, *rest)
        if grad_f_rows is None:
            return no_grad_f
        if idx is None:
            grad_f = grad_f_rows
        else:
            grad_f = grad_f_rows.new_zeros((b * h * w, grad_f_rows.shape[1]))
            grad_f.index_copy_(0, idx, grad_f_rows)
        grad_f = grad_f.view(b, h, w, -1).permute(0, 3, 1, 2)

        # The perception's backward: the Sobel adjoint, autograd's own (features given), or
        # autograd on the recomputation.
        if perm is not None:
            _sobel_adjoint(nca, grad_f, perm, flat)
            return no_grad_f
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
