"""The update rule: a per-cell MLP from perceived features to a residual state change."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.config import choice

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,  # slope 0.01, PyTorch's default
    "leaky_relu_0.2": functools.partial(F.leaky_relu, negative_slope=0.2),  # NCAtorch's
}


def activation(name: str, key: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name``; ``key`` names the config entry on error."""
    choice(name, list(ACTIVATIONS), key)
    return ACTIVATIONS[name]


class UpdateMLP(nn.Module):
    """Linear layers applied to the last (feature) dimension of a channels-last tensor.

    Equivalent to the 1x1 convolutions of the papers, with the same parameter count; the
    last layer starts at zero so that a new NCA begins as the identity map.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        out_features: int,
        activation_name: str = "relu",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = activation(activation_name, "model.activation")
        if zero_init:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        h = features
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h)
