"""Metrics of the regeneration protocol: LPIPS, MSE and PSNR of images, and Recovery%."""

from __future__ import annotations

import functools
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.measures import EvalError

# AlexNet's pooling needs at least this many pixels a side; smaller grids are enlarged.
LPIPS_MIN_SIDE = 32
# Names of the image metrics; a task's own metrics keep their names beside them.
IMAGE_METRICS = {"lpips": "minimize", "image_mse": "minimize", "psnr": "maximize"}


@functools.cache
def lpips_model(net: str = "alex") -> nn.Module:
    """The LPIPS model for ``net``, built once per process (importing lpips takes seconds).

    Its linear layers ship with the lpips package; the backbone comes from torchvision's
    cache under ``TORCH_HOME`` (downloaded there when missing and the network allows it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`
        import lpips

        # Building draws random initial weights: leave the caller's random stream alone.
        with torch.random.fork_rng(devices=[]):
            try:
                model = lpips.LPIPS(net=net, verbose=False)
            except (OSError, RuntimeError) as err:
                home = os.environ.get("TORCH_HOME", "~/.cache/torch")
                raise EvalError(
                    f"cannot load the LPIPS {net!r} backbone weights: {err}. torchvision "
                    f"reads them from {home}/hub/checkpoints (set TORCH_HOME to a folder "
                    "holding them, or allow the download)"
                ) from None
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips_distance(pred: Tensor, target: Tensor, net: str = "alex") -> Tensor:
    """Per-sample LPIPS ``(B,)`` of RGB images ``(B, 3, H, W)`` in [0, 1].

    ``normalize=True`` maps [0, 1] to the [-1, 1] that LPIPS expects. Grids with a side
    under 32 cells are enlarged (nearest neighbour) first.
    """
    side = min(pred.shape[-2:])
    if side < LPIPS_MIN_SIDE:
        factor = math.ceil(LPIPS_MIN_SIDE / side)
        pred = F.interpolate(pred, scale_factor=factor, mode="nearest")
        target = F.interpolate(target, scale_factor=factor, mode="nearest")
    model = lpips_model(net).to(pred.device)
    return model(pred.float(), target.float(), normalize=True).flatten()


def image_metrics(pred: Tensor, target: Tensor, net: str = "alex") -> dict[str, Tensor]:
    """LPIPS, MSE and PSNR (dB, peak 1) per sample of RGB images in [0, 1]."""
    mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return {
        "lpips": lpips_distance(pred, target, net),
        "image_mse": mse,
        "psnr": 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10)),
    }


def recovery_pct(
    pre: float, damaged: float, final: float, *, before: float | None = None, tol: float = 1e-6
) -> tuple[float | None, str | None]:
    """Recovery% = (m_final − m_d) / (m_pre − m_d) · 100, and why it is undefined.

    100% is back to the metric before the perturbation (``pre``, Stage 2), 0% no better
    than right after it (``damaged``), negative worse; the formula holds for metrics of
    either direction. ``before`` is the metric right before the perturbation (default
    ``pre``): a perturbation that moves it by ``tol`` or less left nothing to recover, and
    (None, reason) comes back, as it does when m_pre − m_d vanishes.
    """
    before = pre if before is None else before
    if not all(math.isfinite(v) for v in (pre, damaged, final, before)):
        return None, f"a metric is not finite (pre {pre}, damaged {damaged}, final {final})"
    if abs(before - damaged) <= tol:
        return None, (
            f"the perturbation changed the metric by {abs(before - damaged):.3g} "
            f"(<= {tol:g}): nothing to recover from"
        )
    change = pre - damaged
    if abs(change) <= tol:
        return None, (
            f"Stage 2 ({pre:.6g}) equals the metric right after the perturbation: "
            "Recovery% would divide by zero"
        )
    return (final - damaged) / change * 100.0 + 0.0, None  # + 0.0: no -0.0


def summary(values: Tensor | list[float | None]) -> dict[str, object]:
    """Mean, standard deviation (n − 1; 0 for one value) and the per-sample values; None
    entries (undefined values) are kept in the list and left out of mean and std."""
    samples = [None if v is None else float(v) for v in values]
    defined = [v for v in samples if v is not None]
    if not defined:
        return {"mean": None, "std": None, "samples": samples}
    mean = sum(defined) / len(defined)
    var = sum((v - mean) ** 2 for v in defined) / (len(defined) - 1) if len(defined) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "samples": samples}
