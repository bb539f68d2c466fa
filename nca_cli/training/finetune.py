"""Fine-tuning: a run that starts from another run's weights (``init=``) and trains all of
them or only some (``trainer.trainable``), as NCALab's fine-tuning does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from nca_cli.config import ConfigError
from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from nca_cli.zoo import is_zoo_name, zoo_checkpoint

_LAYER = re.compile(r"^(.*\bupdate\.layers\.)(\d+)\.")


def trainable_names(model: nn.Module, trainable: str) -> list[str]:
    """The names of ``model``'s parameters that ``trainable`` leaves to train (of a
    cascade, those of every level)."""
    names = [name for name, _ in model.named_parameters()]
    if trainable == "all":
        return names
    layers = {n: (m[1], int(m[2])) for n in names if (m := _LAYER.match(n))}
    if trainable == "update":
        return list(layers)
    last: dict[str, int] = {}  # the last layer's index of each update rule
    for rule, index in layers.values():
        last[rule] = max(last.get(rule, 0), index)
    return [n for n, (rule, index) in layers.items() if index == last[rule]]


def freeze(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Stop the gradients of the parameters ``trainable`` leaves out; returns the rest."""
    kept = set(trainable_names(model, trainable))
    for name, param in model.named_parameters():
        param.requires_grad_(name in kept)
    return [p for name, p in model.named_parameters() if name in kept]


def source_checkpoint(source: str) -> Path:
    """The checkpoint that ``init=SOURCE`` names: a run folder's last.ckpt, a file, or a
    model of the zoo (``zoo:NAME``)."""
    if is_zoo_name(source):
        return zoo_checkpoint(source)
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(
            f"invalid value for 'init': {source!r} is neither a run folder holding "
            f"{CHECKPOINT_NAME}, a checkpoint file nor zoo:NAME"
        )
    return path


def load_initial_weights(model: nn.Module, source: str) -> dict[str, Any]:
    """Copy the weights of the run ``source`` into ``model``; a layer that the two models do
    not share, or that has another shape, is a ConfigError naming it and both shapes.
    Returns what the new run records of its source."""
    path = source_checkpoint(source)
    payload = load_checkpoint(path)
    theirs: dict[str, Any] = payload["model"]
    ours = model.state_dict()
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    unshared = [f"this run has {', '.join(missing)} and it does not"] if missing else []
    unshared += [f"it has {', '.join(extra)} and this run does not"] if extra else []
    if unshared:
        raise ConfigError(
            f"invalid value for 'init': the model of {path} does not fit this run's model: "
            + "; ".join(unshared)
        )
    for key, tensor in ours.items():
        if tuple(theirs[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"invalid value for 'init': layer {key} has shape {tuple(theirs[key].shape)} "
                f"in {path} but {tuple(tensor.shape)} in this run's model (change the run's "
                "model to the source's: model.channels, model.hidden, perception)"
            )
    model.load_state_dict(theirs)
    return {"path": str(path.resolve()), "iteration": payload["iteration"]}
