"""Broken files: a truncated or corrupt checkpoint, one from an incompatible version, a
folder that is not a run: clear errors from every command that reads them, no tracebacks,
and nothing written into the folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_support import TINY, assert_clean_error, run_main

from nca_cli.commands import eval as eval_command
from nca_cli.commands import kfold, train
from nca_cli.composition import compose
from nca_cli.training.trainer import train as train_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train_run(compose(TINY), run)
    return run


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edited(path: Path, change: Callable[[dict], Any]) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


BROKEN: dict[str, tuple[Callable[[Path], Any], str]] = {
    "truncated": (half, "truncated, corrupt"),
    "garbage": (lambda p: p.write_bytes(b"\x00garbage" * 100), "truncated, corrupt"),
    "empty": (lambda p: p.write_bytes(b""), "truncated, corrupt"),
    "format": (lambda p: edited(p, lambda c: c.update(format=99)), "format 99"),
    "not_nca": (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not an nca checkpoint"),
    "incomplete": (lambda p: torch.save({"format": 1}, p), "lacks iteration, model, config"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_checkpoint_is_a_clear_error_everywhere(
    kind: str, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, needle = BROKEN[kind]
    checkpoint = copy / "last.ckpt"
    damage(checkpoint)
    before, damaged = {p.name for p in copy.iterdir()}, checkpoint.read_bytes()
    for main, argv in [
        (train.main, [f"resume={copy}"]),
        (eval_command.main, ["--checkpoint", str(checkpoint), "--no-wandb"]),
        (eval_command.main, ["--run", str(copy), "--no-wandb"]),
    ]:
        code, output = run_main(main, argv, capsys)
        assert code == 2, (argv, output)
        assert_clean_error(output, needle, str(checkpoint))
    assert {p.name for p in copy.iterdir()} - {"train.log"} == before  # the log says why
    assert checkpoint.read_bytes() == damaged  # kept as it was, for inspection


def test_format_error_names_both_versions(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited(copy / "last.ckpt", lambda c: c.update(format=99))
    code, output = run_main(train.main, [f"resume={copy}"], capsys)
    assert code == 2
    assert_clean_error(output, "format 99", "written by nca", "reads format 1")


def test_checkpoint_that_does_not_fit_its_config(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited(copy / "last.ckpt", lambda c: c["config"]["model"].update(channels=24))
    code, output = run_main(train.main, [f"resume={copy}"], capsys)
    assert code == 2
    assert_clean_error(output, "does not fit the model")


@pytest.mark.parametrize("kind", ["empty", "missing", "file"])
def test_a_folder_that_is_not_a_run(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "not-a-run"
    if kind == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("my notes")
    elif kind == "file":
        folder.write_text("a file")
    for main, argv, needle in [
        (train.main, [f"resume={folder}"], "resume"),
        (eval_command.main, ["--run", str(folder), "--no-wandb"], "not a"),
        (kfold.main, [f"dir={folder}"], "not a k-fold folder"),
    ]:
        code, output = run_main(main, argv, capsys)
        assert code == 2, (argv, output)
        assert_clean_error(output, needle, str(folder))
    if kind == "empty":  # untouched: no .hydra/, no log, no checkpoint
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    elif kind == "missing":
        assert not folder.exists()
