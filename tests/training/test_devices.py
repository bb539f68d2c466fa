"""``device=``: a device this machine lacks is refused naming the key, and a run trained on
a GPU is still evaluated on a machine without one."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nca_cli import api
from nca_cli.compute import device_problem, place_device
from nca_cli.measures.protocol import ProtocolConfig
from nca_cli.measures.steps import ProtocolSteps
from nca_cli.training.checkpoint import load_checkpoint, save_checkpoint

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
SMOKE = ["task=growing", "trainer=smoke", "logger=none"]


def nca(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=cwd,
        env={**os.environ, "NCA_OUTPUT_DIR": str(cwd / "outputs")},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_device_names_are_checked(tmp_path: Path) -> None:
    out = nca("train", *SMOKE, "device=gpu", cwd=tmp_path)
    assert out.returncode == 2 and "'device'" in out.stderr and "cuda[:N]" in out.stderr
    assert device_problem("cpu") is None


@no_cuda
def test_cuda_without_a_cuda_device_is_refused_before_any_work(tmp_path: Path) -> None:
    out = nca("train", *SMOKE, "device=cuda", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "invalid value for 'device': 'cuda'" in out.stderr and "device=cpu" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()  # no run folder made


@no_cuda
def test_a_gpu_run_is_evaluated_here_and_resumed_with_device_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    api.train(api.compose(SMOKE), run)
    payload = load_checkpoint(run / "last.ckpt")
    payload["config"]["device"] = "cuda"  # as a GPU machine would have saved it
    save_checkpoint(run / "last.ckpt", payload)

    steps = ProtocolSteps(stage1=[4, 6], stage2=9, perturb_at=10, stage3=20)
    protocol = ProtocolConfig(steps=steps, samples=2, curve_every=0, detail=False)
    with caplog.at_level(logging.WARNING):
        figures = api.evaluate(run, protocol, wandb=False)
    assert "evaluating on the CPU (device=cpu)" in caplog.text
    assert figures["protocol"]["samples"] == 2 and figures["iteration"] == 4

    refused = nca("train", f"resume={run}", "trainer.iterations=8", cwd=tmp_path)
    assert refused.returncode == 2 and "device=cpu" in refused.stderr, refused.stderr
    resumed = nca("train", f"resume={run}", "trainer.iterations=8", "device=cpu", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "last.ckpt")["iteration"] == 8


def test_out_of_memory_names_what_to_lower_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device's allocator fails in the third iteration (injected: this machine has no
    GPU to exhaust): the run stops with a message naming the keys that shrink it, marks
    itself failed, and resumes from its last checkpoint with lower values."""
    from nca_cli.engine.nca import NCA
    from nca_cli.training.trainer import OutOfMemory

    rollout = NCA.rollout
    calls = [0]

    def failing(self: NCA, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return rollout(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(NCA, "rollout", failing)
    run = tmp_path / "run"
    config = api.compose([*SMOKE, "trainer.checkpoint_every=1"])
    with pytest.raises(OutOfMemory) as failed:
        api.train(config, run)
    message = str(failed.value)
    for key in ("trainer.batch_size", "trainer.steps", "trainer.gradient_checkpointing"):
        assert key in message
    assert "at iteration 3" in message and "Tried to allocate 9.00 GiB" in message
    assert load_checkpoint(run / "last.ckpt")["iteration"] == 2
    assert "trainer.batch_size" in (run / "error.txt").read_text()  # marked failed
    monkeypatch.setattr(NCA, "rollout", rollout)
    resumed = nca("train", f"resume={run}", "trainer.batch_size=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "last.ckpt")["iteration"] == 4
    assert not (run / "error.txt").exists()


def test_parallel_jobs_share_the_gpus_round_robin() -> None:
    jobs = [place_device("cuda", slot, 3) for slot in range(5)]
    assert jobs == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert place_device("cuda", 4, 1) == "cuda"  # one GPU: every job on it
    assert place_device("cuda:1", 0, 3) == "cuda:1"  # a chosen GPU stays
    assert place_device("cpu", 2, 3) == "cpu"
