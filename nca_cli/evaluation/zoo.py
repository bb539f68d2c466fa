"""Adding a run to the model zoo (a slim checkpoint, its figures and its golden figure) and
checking that every zoo model still gives its golden figure."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from nca_cli.atomic import write_text_atomic
from nca_cli.errors import ConfigError
from nca_cli.evaluation.runs import find_checkpoint
from nca_cli.evaluation.task_figures import task_figures
from nca_cli.training.checkpoint import load_checkpoint, save_checkpoint
from nca_cli.zoo import Golden, ZooModel, catalogue, catalogue_path, models_folder

MAX_BYTES = 1_000_000  # a zoo checkpoint must stay well under a megabyte
KEPT = ("format", "iteration", "model", "config", "environment")  # no pool, optimiser, RNG


def golden_figure(model: ZooModel) -> float:
    """The zoo model's golden evaluation, run now."""
    g = model.golden
    figures = task_figures(
        model.path, g.overrides, g.split, g.batch_size, g.samples or None, g.steps, g.seed
    )
    if g.metric not in figures:
        raise ConfigError(
            f"zoo model {model.name!r}: the golden metric {g.metric!r} is not among the task's "
            f"figures ({', '.join(sorted(figures))})"
        )
    return float(figures[g.metric])


def add_model(
    name: str,
    run: Path,
    description: str,
    command: str,
    metrics: dict[str, float],
    golden: Golden,
    source: str = "",
) -> ZooModel:
    """Copy ``run``'s weights and config into the zoo as ``name``, measure its golden
    figure (``golden.value`` is replaced by what it gives now) and list it."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid zoo name {name!r}: use letters, digits and dashes")
    checkpoint = find_checkpoint(run)
    payload = load_checkpoint(checkpoint)
    slim = {k: payload[k] for k in KEPT if k in payload}
    folder = models_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ckpt"
    save_checkpoint(path, slim)
    if path.stat().st_size > MAX_BYTES:
        size = path.stat().st_size
        path.unlink()
        raise ConfigError(
            f"{checkpoint} makes a zoo checkpoint of {size:,} bytes, over {MAX_BYTES:,}"
        )
    parameters = sum(t.numel() for t in slim["model"].values() if isinstance(t, torch.Tensor))
    model = ZooModel(
        name=name,
        file=path.name,
        task=str(slim["config"].get("task", {}).get("name", "")),
        description=description,
        command=command,
        iteration=int(slim["iteration"]),
        parameters=int(parameters),
        metrics=metrics,
        golden=golden,
        source=source,
    )
    model.golden.value = golden_figure(model)
    entries = {n: _entry(m) for n, m in catalogue().items()}
    entries[name] = _entry(model)
    write_text_atomic(catalogue_path(), json.dumps(entries, indent=2) + "\n")
    return model


def _entry(model: ZooModel) -> dict[str, object]:
    entry = asdict(model)
    del entry["name"]
    return entry
