"""SIGINT and SIGTERM to a real ``nca train``: a checkpoint of the last iteration, W&B
closed, a resume hint, a non-zero exit; a second Ctrl-C quits at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from reliability_support import TINY, assert_clean_error, nca, rows, start, wait_for

from nca_cli.training.checkpoint import load_checkpoint

FOREVER = ["trainer.iterations=100000", "trainer.checkpoint_every=1000", "trainer.log_every=1"]


def stop_after_rows(sig: int, extra: list[str], tmp_path: Path) -> tuple[int, str, Path]:
    """Train until three rows are logged, send ``sig``; exit status, output, run folder."""
    run, log = tmp_path / "run", tmp_path / "nca.log"
    proc = start("train", *extra, *FOREVER, f"hydra.run.dir={run}", cwd=tmp_path, log=log)
    wait_for(lambda: len(rows(run / "metrics.jsonl")) >= 3, 120, "three logged iterations")
    proc.send_signal(sig)
    return proc.wait(timeout=120), log.read_text(), run


def test_sigint_checkpoints_closes_wandb_and_says_how_to_resume(tmp_path: Path) -> None:
    extra = [*[a for a in TINY if a != "logger=none"], "logger=wandb"]  # W&B offline
    code, output, run = stop_after_rows(signal.SIGINT, extra, tmp_path)
    assert code == 130, output
    assert_clean_error(output, "interrupted at iteration", f"nca train resume={run}")
    last = rows(run / "metrics.jsonl")[-1]["iteration"]
    assert load_checkpoint(run / "last.ckpt")["iteration"] == last  # saved at the stop
    (debug,) = (run / "wandb").glob("offline-run-*/logs/debug.log")
    assert "finishing run" in debug.read_text(), "the W&B run was not closed"

    more = nca("train", f"resume={run}", f"trainer.iterations={last + 2}", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert [r["iteration"] for r in rows(run / "metrics.jsonl")] == list(range(1, last + 3))
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # the same W&B run id
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert ids == {load_checkpoint(run / "last.ckpt")["wandb_id"]}


def test_sigterm_checkpoints_and_exits_non_zero(tmp_path: Path) -> None:
    code, output, run = stop_after_rows(signal.SIGTERM, TINY, tmp_path)
    assert code != 0, output
    assert_clean_error(output, "interrupted at iteration", f"nca train resume={run}")
    last = rows(run / "metrics.jsonl")[-1]["iteration"]
    assert load_checkpoint(run / "last.ckpt")["iteration"] == last


def test_second_ctrl_c_quits_at_once(tmp_path: Path) -> None:
    """Iterations of several seconds: the first Ctrl-C would wait for the end of one, the
    second must not."""
    run, log = tmp_path / "run", tmp_path / "nca.log"
    slow = ["dataset.size=40", "dataset.padding=16", "trainer.batch_size=8"]
    steps = ["trainer.steps.min=300", "trainer.steps.max=300"]
    argv = ["train", *TINY, *slow, *steps, *FOREVER, f"hydra.run.dir={run}"]
    proc = start(*argv, cwd=tmp_path, log=log)
    wait_for(lambda: len(rows(run / "metrics.jsonl")) >= 1, 300, "the first iteration")
    begun = time.monotonic()  # iteration 2 has just started
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    took = time.monotonic() - begun
    output = log.read_text()
    assert code == 130, output
    assert_clean_error(output, "quitting at once", f"nca train resume={run}")
    assert took < 2.5, f"the second Ctrl-C took {took:.1f} s to end nca"
    load_checkpoint(run / "last.ckpt")  # whole
    assert len(rows(run / "metrics.jsonl")) == 1  # iteration 2 never ended
