"""The fast NCA step: one autograd function with a hand-written backward.

It computes exactly what :meth:`NCA.reference_step` computes, in float32 or float64, and
differs in how:

- the update MLP runs only on the cells whose result is used: cells that fire and have a
  living cell within reach of the alive mask. The others' updates are multiplied by zero
  in the reference, so skipping them changes no value and no gradient; with fire rate 0.5
  this halves the arithmetic.
- states are channels-last, so the MLP is a plain matrix product on ``(cells, channels)``
  rows, and residual add and alive masks happen in place on those rows.
- the backward pass stores only the step's input state, the selected rows and the alive
  mask (about one state per step), and recomputes the perception and the hidden layers from
  them; the perception's own backward is left to autograd, so every perception works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from nca_cli.engine.perception import max3x3, pad, perception_flops

if TYPE_CHECKING:
    from nca_cli.engine.nca import NCA


def rows(t: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` tensor as ``(B*H*W, C)`` rows, a view when it is channels-last."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _mlp_forward(nca: NCA, h: Tensor, keep: bool) -> tuple[Tensor, list[Tensor]]:
    """The update MLP on rows ``h``; with ``keep``, also the inputs of every layer."""
    layers = nca.update.layers
    relu = nca.update.act is F.relu
    inputs = []
    for layer in layers[:-1]:
        if keep:
            inputs.append(h)
        h = torch.addmm(layer.bias, h, layer.weight.t())
        h = h.relu_() if relu else nca.update.act(h)
    if keep:
        inputs.append(h)
    last = layers[-1]
    return torch.addmm(last.bias, h, last.weight.t()), inputs


def _mlp_backward(
    nca: NCA, inputs: list[Tensor], grad: Tensor, need: list[bool]
) -> tuple[Tensor, list[Tensor | None]]:
    """Gradients of the MLP from its layer inputs: (input rows, [dW, db per layer])."""
    layers = nca.update.layers
    relu = nca.update.act is F.relu
    grads: list[Tensor | None] = []
    for i in range(len(layers) - 1, -1, -1):
        layer, h = layers[i], inputs[i]
        grads[:0] = [
            torch.mm(grad.t(), h) if need[2 * i] else None,
            grad.sum(0) if need[2 * i + 1] else None,
        ]
        grad = torch.mm(grad, layer.weight)
        if i > 0:  # through the activation that produced h
            if relu:
                grad = torch.ops.aten.threshold_backward(grad, h, 0.0)
            else:
                prev = layers[i - 1]
                with torch.enable_grad():
                    z = torch.addmm(prev.bias, inputs[i - 1], prev.weight.t()).requires_grad_()
                    (grad,) = torch.autograd.grad(nca.update.act(z), z, grad)
    return grad, grads


def _dilate(nca: NCA, mask: Tensor) -> Tensor:
    """Cells within the 3x3 reach of ``mask``, under the same padding as the alive mask."""
    return max3x3(pad(mask.to(torch.float32), 1, nca.padding)) > 0


class FusedStep(torch.autograd.Function):
    """One NCA step: ``x``, and the perceived ``features`` when autograd computed them.

    With ``features`` None, the perception runs inside and is recomputed in the backward
    pass (cheap perceptions: only the state is stored); ``params`` are then the MLP's and
    the perception's parameters. Otherwise autograd owns the perception and its backward
    (costly perceptions: a recomputation would cost more than what it saves) and this
    function stores the selected feature rows.
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
        f_rows = rows(nca.perception(x) if features is None else features)
        if idx is not None:
            f_rows = f_rows.index_select(0, idx)
        dx, _ = _mlp_forward(nca, f_rows, keep=False)
        if noise is not None:
            noise_rows = rows(noise)
            dx += noise_rows if idx is None else noise_rows.index_select(0, idx)
        out = torch.empty((b, h, w, c), dtype=x.dtype, device=x.device)
        flat = out.view(-1, c)
        flat.copy_(rows(x))
        upd = flat[:, fixed:]
        if idx is None:
            upd += dx
        else:
            upd.index_put_((idx,), dx, accumulate=True)
        y = out.permute(0, 3, 1, 2)
        mask = None
        if pre is not None:
            mask = pre & nca.alive(y)
            upd *= rows(mask)
        ctx.nca, ctx.shape, ctx.recompute = nca, (b, c, h, w), recompute
        ctx.save_for_backward(x if recompute else f_rows, idx, mask)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        nca: NCA = ctx.nca
        saved, idx, mask = ctx.saved_tensors
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
            upd *= rows(mask)
        grad_dx = upd if idx is None else upd.index_select(0, idx)

        # The update MLP, its hidden layers recomputed from the selected feature rows.
        perception_params = list(nca.perception.parameters()) if ctx.recompute else []
        wanted = [p for p, n in zip(perception_params, need[n_mlp:], strict=True) if n]
        if ctx.recompute:
            with torch.enable_grad():
                xd = saved.detach().requires_grad_(need_x)
                feats = nca.perception(xd)
            f_rows = rows(feats.detach())
            if idx is not None:
                f_rows = f_rows.index_select(0, idx)
        else:
            f_rows = saved
        _, inputs = _mlp_forward(nca, f_rows, keep=True)
        grad_f_rows, mlp_grads = _mlp_backward(nca, inputs, grad_dx, need[:n_mlp])
        if idx is None:
            grad_f = grad_f_rows
        else:
            grad_f = grad_f_rows.new_zeros((b * h * w, grad_f_rows.shape[1]))
            grad_f.index_copy_(0, idx, grad_f_rows)
        grad_f = grad_f.view(b, h, w, -1).permute(0, 3, 1, 2)
        if not ctx.recompute:
            return (None, grad_x.permute(0, 3, 1, 2), grad_f, None, None, *mlp_grads)

        # The perception's backward, by autograd on the recomputed features.
        inputs_ = ([xd] if need_x else []) + wanted
        grads = list(torch.autograd.grad(feats, inputs_, grad_f)) if inputs_ else []
        if need_x:
            grad_x += grads.pop(0).permute(0, 2, 3, 1)
        it = iter(grads)
        p_grads = [next(it) if n else None for n in need[n_mlp:]]
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
