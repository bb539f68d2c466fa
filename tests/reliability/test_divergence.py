"""A diverging run stops with a message naming the iteration and the likely cause, and
keeps its last good checkpoint (a diverging sweep trial: see test_interrupted_runs.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_support import TINY, assert_clean_error, nca, rows

from nca_cli.composition import compose
from nca_cli.training import trainer as trainer_module
from nca_cli.training.checkpoint import load_checkpoint
from nca_cli.training.trainer import DivergenceError, train

EVERY = ["trainer.checkpoint_every=1", "trainer.iterations=20"]


def finite(checkpoint: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in checkpoint["model"].values())


def test_exploding_learning_rate_through_the_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = nca("train", *TINY, *EVERY, "lr=1e6", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 1
    assert_clean_error(out.stderr, "diverged at iteration 2", "Likely cause", "learning rate")
    assert_clean_error(out.stderr, "last good checkpoint, of iteration 1", str(run / "last.ckpt"))
    kept = load_checkpoint(run / "last.ckpt")
    assert kept["iteration"] == 1 and finite(kept)
    assert "diverged at iteration 2" in (run / "error.txt").read_text()
    assert [r["iteration"] for r in rows(run / "metrics.jsonl")] == [1]


def test_non_finite_gradients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = trainer_module.treat_gradients
    calls: list[int] = []

    def treat(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return torch.tensor(math.inf) if len(calls) == 3 else original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "treat_gradients", treat)
    with pytest.raises(DivergenceError) as caught:
        train(compose([*TINY, *EVERY]), tmp_path)
    message = str(caught.value)
    assert "at iteration 3: the gradient norm is inf" in message and "Likely cause" in message
    assert "last good checkpoint, of iteration 2" in message
    assert load_checkpoint(tmp_path / "last.ckpt")["iteration"] == 2


def test_every_cell_dead(tmp_path: Path) -> None:
    with pytest.raises(DivergenceError) as caught:
        train(compose([*TINY, *EVERY, "model.alive_threshold=5.0"]), tmp_path)
    message = str(caught.value)
    assert "every cell is dead after iteration 1" in message and "alive_threshold" in message
    assert "Likely cause" in message and "last good checkpoint, of iteration 0" in message
    kept = load_checkpoint(tmp_path / "last.ckpt")  # the initial one: resumable
    assert kept["iteration"] == 0 and finite(kept)
