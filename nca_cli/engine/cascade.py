"""A coarse-to-fine cascade of NCAs (Med-NCA, NCALab): cheap global context from coarse
grids, detail from the full-resolution level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA, build_nca
from nca_cli.engine.schema import ModelConfig


class CascadeNCA(nn.Module):
    """Level ``i`` runs on the grid shrunk by ``scales[i]``; its updated channels are
    upsampled into the next level's state, whose fixed channels come from the input."""

    def __init__(self, levels: list[NCA], scales: list[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.scales = list(scales)
        self.layout: ChannelLayout = levels[-1].layout
        self.alive_channel = levels[-1].alive_channel
        self.alive_threshold = levels[-1].alive_threshold

    def alive(self, x: Tensor) -> Tensor:
        return self.levels[-1].alive(x)

    def rollout(
        self,
        x: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        checkpoint_every: int = 0,
        trajectory: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        fixed = self.layout.fixed
        h, w = x.shape[-2:]
        state: Tensor | None = None
        states: list[Tensor] = []
        for nca, scale in zip(self.levels, self.scales, strict=True):
            size = (max(h // scale, 1), max(w // scale, 1))
            shrunk = F.interpolate(x, size=size, mode="area") if scale > 1 else x
            if state is not None:
                grown = F.interpolate(state[:, fixed:], size=size, mode="nearest")
                shrunk = torch.cat([shrunk[:, :fixed], grown], 1) if fixed else grown
            state, level_states = nca.rollout(
                shrunk, steps, generator, checkpoint_every, trajectory
            )
            states += [
                F.interpolate(s, size=(h, w), mode="nearest") if scale > 1 else s
                for s in level_states
            ]
        assert state is not None
        return state, states


def build_model(
    model: ModelConfig,
    perception: Mapping[str, Any],
    layout: ChannelLayout,
    alive_channel: int | None,
) -> NCA | CascadeNCA:
    """One NCA, or a cascade when ``model.scales`` has several levels."""
    if model.scales == [1]:
        return build_nca(model, perception, layout, alive_channel)
    levels = [build_nca(model, perception, layout, alive_channel) for _ in model.scales]
    return CascadeNCA(levels, model.scales)
