"""On a CUDA device (skipped without one; `make gpu-check` runs them with the CUDA bench):
the dense step matches the CPU's reference step, training runs and resumes on the device,
and the bench times the dense step there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nca_cli import api
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import build_nca
from nca_cli.engine.schema import ModelConfig
from nca_cli.training.checkpoint import load_checkpoint
from nca_cli.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
SMOKE = ["task=growing", "trainer=smoke", "logger=none", "device=cuda"]


@pytest.mark.parametrize("compiled", [False, True])
def test_the_dense_step_on_cuda_is_the_cpu_reference_step(compiled: bool) -> None:
    layout = ChannelLayout(16, visible=4, alpha=3)
    torch.manual_seed(0)
    nca = build_nca(ModelConfig(zero_init=False), {"kind": "sobel"}, layout, 3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((4, 16, 24, 24), generator=g)
    noise = nca.draw_noise(x0, 8, g)

    def run(device: str, engine: str) -> list[torch.Tensor]:
        model = nca.to(device)
        model.engine, model.compile_dense = engine, compiled
        model.zero_grad(set_to_none=True)
        x = x0.to(device).requires_grad_()
        fire = None if noise.fire is None else noise.fire.to(device)
        final = model._block(x, fire, None, 8)
        final.square().sum().backward()
        assert x.grad is not None
        grads = [p.grad.detach().cpu() for p in model.parameters() if p.grad is not None]
        return [final.detach().cpu(), x.grad.cpu(), *grads]

    reference = run("cpu", "reference")
    dense = run("cuda", "dense")
    for got, want in zip(dense, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_on_cuda_runs_and_resumes(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    api.train(api.compose(SMOKE), whole)
    api.train(api.compose([*SMOKE, "trainer.iterations=2"]), parts)
    payload = load_checkpoint(parts / "last.ckpt")
    assert payload["rng"]["device"]["type"] == "cuda"  # the rollouts' stream is saved
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "train", f"resume={parts}", "trainer.iterations=4"],
        capture_output=True,
        text=True,
        env={**os.environ, "NCA_OUTPUT_DIR": str(tmp_path / "outputs")},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    a = load_checkpoint(whole / "last.ckpt")["model"]
    b = load_checkpoint(parts / "last.ckpt")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_training_iterations_between_reads_make_no_host_sync(tmp_path: Path) -> None:
    # The growing family with a pool and damage: sampling, renewal, damage masks, rollout,
    # loss, gradient treatment and the optimiser step all stay on the device.
    regenerating = ["task=regenerating", "trainer.batch_size=8", "pool_size=16", "seed=0"]
    # Rollouts of 9 steps, a block of 8 and one step: both compiled by the first step.
    nine = ["trainer.steps.min=9", "trainer.steps.max=9"]
    config = api.compose([*SMOKE, *regenerating, *nine])
    trainer = Trainer(config, tmp_path)
    trainer.read([trainer.train_step()])  # the first step compiles and fills the caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [trainer.train_step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    figures = trainer.read(results)
    assert len(trainer.history) == 4 and figures["grad_norm"] > 0


def test_bench_times_the_dense_step_on_cuda(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "bench", "--device", "cuda", "--cases", "growing",
         "--iters", "3", "--json", str(tmp_path / "bench.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert row["engine"] == "dense" and row["peak_gpu_mb"] > 0
