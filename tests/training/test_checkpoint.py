"""Checkpoints written in the background: the state of their iteration, while training goes
on, and a failed write is not lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from nca_cli.composition import compose
from nca_cli.training import checkpoint as checkpoint_module
from nca_cli.training.checkpoint import CheckpointWriter, load_checkpoint
from nca_cli.training.loggers import NullLogger
from nca_cli.training.trainer import Trainer

SMALL = [
    "trainer=smoke",
    "logger=none",
    "dataset.size=12",
    "dataset.padding=4",
    "trainer.steps.min=12",
    "trainer.steps.max=16",
    "trainer.iterations=4",
    "trainer.checkpoint_every=2",
    "trainer.image_every=100",
]


def test_a_background_write_holds_the_values_it_was_given(tmp_path: Path) -> None:
    moments = torch.arange(6.0)
    payload = {"format": 1, "iteration": 3, "model": {"w": moments}, "config": {"a": [1, 2]}}
    writer = CheckpointWriter()
    done = threading.Event()
    writer.submit(tmp_path / "last.ckpt", payload, done.set)
    moments.add_(100.0)  # the next optimiser step changes the tensors in place
    payload["config"]["a"].append(3)
    writer.wait()
    saved = load_checkpoint(tmp_path / "last.ckpt")
    assert done.is_set() and saved["iteration"] == 3
    assert torch.equal(saved["model"]["w"], torch.arange(6.0))
    assert saved["config"] == {"a": [1, 2]}


def test_training_goes_on_while_a_checkpoint_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(compose(SMALL), tmp_path)
    overtaken: list[bool] = []
    original = checkpoint_module.save_checkpoint

    def slow(path: Path, payload: dict[str, Any]) -> None:
        if payload["iteration"] == 2:  # hold this write until training has moved on
            deadline = time.monotonic() + 60
            while trainer.iteration == 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            overtaken.append(trainer.iteration > 2)
        original(path, payload)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow)
    trainer.fit(NullLogger(), threading.Event(), progress=False)
    assert overtaken == [True]
    assert load_checkpoint(tmp_path / "last.ckpt")["iteration"] == 4
    assert trainer.saved_iteration == 4


def test_a_failed_background_write_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(compose(SMALL), tmp_path)

    def full(path: Path, payload: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", full)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(NullLogger(), threading.Event(), progress=False)
    assert trainer.saved_iteration is None
