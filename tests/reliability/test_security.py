"""Untrusted files and secrets: a checkpoint whose pickle would run code does not run it,
archives cannot write outside their folder, and no password or API key is saved."""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_support import TINY, assert_clean_error, nca, run_main

from nca_cli import masking
from nca_cli.commands import eval as eval_command
from nca_cli.commands import train
from nca_cli.datasets.storage import DataError, safe_extract
from nca_cli.masking import mask_secrets, mask_text
from nca_cli.training import loggers
from nca_cli.training.checkpoint import CheckpointError, load_checkpoint
from nca_cli.training.schema import LoggerConfig


class Payload:
    """Unpickling this runs a shell command: here, creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoints(folder: Path, marker: Path) -> list[Path]:
    """A torch checkpoint (zip) and a plain pickle, both carrying the payload."""
    folder.mkdir(parents=True, exist_ok=True)
    zipped, legacy = folder / "zipped.ckpt", folder / "legacy.ckpt"
    torch.save(
        {"format": 1, "iteration": 0, "model": {}, "config": {}, "x": Payload(marker)}, zipped
    )
    legacy.write_bytes(pickle.dumps({"format": 1, "x": Payload(marker)}))
    return [zipped, legacy]


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Control: loading the file without weights_only does run the command."""
    marker = tmp_path / "ran"
    (zipped, _) = hostile_checkpoints(tmp_path / "files", marker)
    code = f"import torch; torch.load({str(zipped)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_hostile_checkpoint_never_runs_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    for path in hostile_checkpoints(tmp_path / "files", marker):
        with pytest.raises(CheckpointError, match="truncated, corrupt, or not an nca"):
            load_checkpoint(path)
        run = tmp_path / f"run-{path.stem}"
        run.mkdir()
        (run / "last.ckpt").write_bytes(path.read_bytes())
        for main, argv in [
            (train.main, [f"resume={run}"]),
            (eval_command.main, ["--checkpoint", str(path), "--no-wandb"]),
        ]:
            code, output = run_main(main, argv, capsys)
            assert code == 2, output
            assert_clean_error(output, "cannot load checkpoint")
    assert not marker.exists(), "the checkpoint ran code"


def test_hostile_checkpoint_through_the_real_command(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (zipped, _) = hostile_checkpoints(tmp_path / "files", marker)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(zipped.read_bytes())
    out = nca("train", f"resume={run}", cwd=tmp_path)
    assert out.returncode == 2
    assert_clean_error(out.stderr, "cannot load checkpoint")
    assert not marker.exists()


def archive(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, body in entries.items():
            zf.writestr(name, body)
    return out.getvalue()


@pytest.mark.parametrize("entry", ["../x", "a/../../x", "/tmp/nca-absolute-x", "a/../../../x"])
def test_zip_entries_outside_the_folder_are_refused(tmp_path: Path, entry: str) -> None:
    root = tmp_path / "deep" / "data"
    root.mkdir(parents=True)
    zipped = tmp_path / "evil.zip"
    zipped.write_bytes(archive({"ok/file.txt": b"fine", entry: b"escaped"}))
    with pytest.raises(DataError, match="outside the extraction folder"):
        safe_extract(zipped, root / "dataset")
    assert not (root / "dataset").exists()
    assert sorted(p.name for p in root.iterdir()) == []  # no half-extracted folder
    assert [p.name for p in tmp_path.rglob("x")] == []
    assert not Path("/tmp/nca-absolute-x").exists()


def test_a_clean_zip_extracts(tmp_path: Path) -> None:
    zipped = tmp_path / "ok.zip"
    zipped.write_bytes(archive({"a/b.txt": b"fine"}))
    safe_extract(zipped, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"fine"


# -- secrets --------------------------------------------------------------------------
SECRET, KEY = "Db5ecretPw", "k" * 8 + "APIKEY5ECRET" + "k" * 20
URL = f"postgresql+psycopg://nca:{SECRET}@db.example:5432/sweeps"


def test_masking() -> None:
    assert mask_text(f"storage {URL} and http://u:p@h/x") == (
        "storage postgresql+psycopg://nca:***@db.example:5432/sweeps and http://u:***@h/x"
    )
    assert mask_text("sqlite:////tmp/optuna.db https://example.org/a?b=c") == (
        "sqlite:////tmp/optuna.db https://example.org/a?b=c"
    )
    masked = mask_secrets({"storage": URL, "wandb_api_key": KEY, "n": [URL], "lr": 1e-3})
    assert SECRET not in repr(masked) and KEY not in repr(masked) and masked["lr"] == 1e-3


def test_logs_mask_passwords(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("nca", logging.INFO, __file__, 1, "storage %s", (URL,), None)
    assert masking._scrub(record)
    assert SECRET not in record.getMessage() and "nca:***@db.example" in record.getMessage()


def test_wandb_gets_a_masked_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    seen: dict[str, Any] = {}

    class Run:
        id = "abc"

    def init(**kwargs: Any) -> Run:
        seen.update(kwargs)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    config = {"sweep": {"storage": URL}, "api_key": KEY}
    loggers.WandbLogger(LoggerConfig(mode="offline"), tmp_path, config)
    assert SECRET not in repr(seen["config"]) and KEY not in repr(seen["config"])


def everything_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_no_secret_reaches_a_run_folder(tmp_path: Path) -> None:
    """The W&B key in the environment and a database URL on the command line (an env var
    set for the job, as Hydra allows): neither in config.yaml, the checkpoint, .hydra/,
    train.log nor the W&B files."""
    run = tmp_path / "run"
    wandb = [*[a for a in TINY if a != "logger=none"], "logger=wandb"]
    override = f"++hydra.job.env_set.NCA_OPTUNA_STORAGE={URL}"
    out = nca(
        "train", *wandb, override, f"hydra.run.dir={run}", cwd=tmp_path, env={"WANDB_API_KEY": KEY}
    )
    assert out.returncode == 0, out.stderr
    saved = everything_under(run)
    assert SECRET.encode() not in saved and KEY.encode() not in saved
    assert b"nca:***@db.example" in (run / ".hydra" / "hydra.yaml").read_bytes()
    assert list(run.glob("wandb/offline-run-*/*.wandb")), "no W&B files were checked"


@pytest.mark.slow
def test_no_secret_reaches_a_sweep_folder(postgres: str, tmp_path: Path) -> None:
    """``storage=`` with a password on the command line of ``nca sweep``."""
    url = postgres.replace("postgresql+psycopg://nca@", f"postgresql+psycopg://nca:{SECRET}@")
    grid = ["fire_rate=0.3,0.5", *TINY, "pruner=none", "study=secret", f"storage={url}"]
    out = nca("sweep", *grid, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    leaks = [
        str(p.relative_to(tmp_path))
        for p in (tmp_path / "outputs").rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    printed = [line for line in (out.stdout + out.stderr).splitlines() if SECRET in line]
    assert not leaks and not printed, f"the password was saved in {leaks}, printed in {printed}"
