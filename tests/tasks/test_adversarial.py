"""GANCA (loss=gan): discriminator and generator losses, the gradient penalty, and
adversarial training that checkpoints and resumes exactly."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.tasks import task_class
from nca_cli.tasks._adversarial import (
    Discriminator,
    bce_discriminator_loss,
    bce_generator_loss,
    gradient_penalty,
    wasserstein_discriminator_loss,
    wasserstein_generator_loss,
)
from nca_cli.training.checkpoint import load_checkpoint
from nca_cli.training.interrupts import Interrupted
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import Trainer, train

# A 12x12 grid (8 + 2 x 2), short rollouts: an adversarial iteration in a fraction of a second.
TINY = [
    "task=ganca",
    "trainer=smoke",
    "logger=none",
    "threads=1",
    "dataset.size=8",
    "dataset.padding=2",
    "trainer.steps.min=4",
    "trainer.steps.max=6",
    "trainer.batch_size=2",
    "loss.d_width=4",
]


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bce_losses_match_a_hand_computation() -> None:
    real, fake = [0.0, 2.0], [-1.0, 0.5]
    expected = sum(bce(sigmoid(r), 0.9) for r in real) / 2
    expected += sum(bce(sigmoid(f), 0.1) for f in fake) / 2
    got = bce_discriminator_loss(torch.tensor(real), torch.tensor(fake), 0.9, 0.1)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Without smoothing the labels are 1 and 0.
    plain = sum(-math.log(sigmoid(r)) for r in real) / 2
    plain += sum(-math.log(1 - sigmoid(f)) for f in fake) / 2
    got = bce_discriminator_loss(torch.tensor(real), torch.tensor(fake), 1.0, 0.0)
    assert float(got) == pytest.approx(plain, rel=1e-6)
    # The generator's non-saturating loss aims at 1, per sample.
    g = bce_generator_loss(torch.tensor(fake))
    assert g.tolist() == pytest.approx([-math.log(sigmoid(f)) for f in fake], rel=1e-6)


def test_wasserstein_losses() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.5])
    assert float(wasserstein_discriminator_loss(real, fake)) == pytest.approx(-0.75 - 2.0)
    assert wasserstein_generator_loss(fake).tolist() == [2.0, -0.5]


class Linear(nn.Module):
    """critic(x, c) = Σ w·x + Σ v·c: its gradient in x is w everywhere."""

    def __init__(self, w: float, v: float, shape: tuple[int, ...], cond: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full(shape, w))
        self.v = nn.Parameter(torch.full(cond, v))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return (x * self.w).flatten(1).sum(1) + (c * self.v).flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic_is_known() -> None:
    # 16 image values of weight 0.5: the gradient norm is 0.5 * 4 = 2, the penalty (2 - 1)².
    critic = Linear(0.5, 7.0, (4, 2, 2), (1, 2, 2))
    real, fake = torch.rand(3, 4, 2, 2), torch.rand(3, 4, 2, 2)
    cond = torch.rand(3, 1, 2, 2)
    penalty = gradient_penalty(lambda x: critic(x, cond), real, fake, torch.rand(3))
    assert float(penalty.detach()) == pytest.approx(1.0, rel=1e-6)
    # It is differentiable in the critic's weights: d/dw_i (‖w‖ − 1)² = 2 (‖w‖ − 1) w_i / ‖w‖.
    penalty.backward()
    assert critic.w.grad is not None
    assert torch.allclose(critic.w.grad, torch.full((4, 2, 2), 0.5))
    # The condition channels are not part of it, whatever their weight.
    assert critic.v.grad is None or float(critic.v.grad.abs().max()) == 0.0


def test_gradient_penalty_mixes_real_and_fake_per_sample() -> None:
    # critic = ½‖x‖²: gradient x̂ = w·real + (1 − w)·fake; real = a·1 (16 values), fake = 0.
    def critic(x: Tensor) -> Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(1)

    a = 0.25
    real, fake = torch.full((2, 4, 2, 2), a), torch.zeros(2, 4, 2, 2)
    weights = torch.tensor([0.5, 1.0])
    norms = [w * a * 4 for w in weights.tolist()]  # ‖x̂‖ = w·a·√16
    expected = sum((n - 1) ** 2 for n in norms) / 2
    penalty = gradient_penalty(critic, real, fake, weights).detach()
    assert float(penalty) == pytest.approx(expected)


def test_discriminator_gives_one_score_per_sample() -> None:
    d = Discriminator(5, width=4, depth=3)
    out = d(torch.rand(2, 4, 40, 40), torch.rand(2, 1, 40, 40))
    assert out.shape == (2,)
    out.sum().backward()
    assert all(p.grad is not None for p in d.parameters())


def gan_task(*extra: str) -> Any:
    config = compose([*TINY, *extra])
    return task_class("edges2emoji")(parse_run_config(config))


def test_generator_loss_adds_the_weighted_reconstruction() -> None:
    task = gan_task("loss.noise=0", "loss.reconstruction=2.0")
    task.build_cotrained(torch.device("cpu"))
    batch = task.fresh(3, torch.Generator().manual_seed(0))
    state = batch["state"].clone()
    state[:, :4] += torch.rand(3, 4, *state.shape[-2:])
    scores = task.adversary.critic(state[:, :4], batch["edges"])
    mse = ((state[:, :4] - batch["target"]) ** 2).mean(dim=(1, 2, 3))
    expected = torch.nn.functional.softplus(-scores) + 2.0 * mse
    assert torch.allclose(task.loss(state, batch), expected)
    # The pool ranks by the reconstruction alone: a fixed measure, unlike the critic.
    assert torch.allclose(task.rank_loss(state, batch), mse)


@pytest.mark.parametrize("mode", ["bce", "wgan_gp"])
def test_adversary_update_trains_the_discriminator(mode: str) -> None:
    task = gan_task(f"loss.mode={mode}", "loss.d_steps=2")
    adversary = task.build_cotrained(torch.device("cpu"))
    batch = task.fresh(2, torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in task.adversary.critic.parameters()]
    logged = adversary.update(batch["state"], batch)
    keys = {"d_loss"} | ({"critic_gap", "gradient_penalty"} if mode == "wgan_gp" else set())
    assert set(logged) == keys and all(math.isfinite(v) for v in logged.values())
    after = list(task.adversary.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("loss.mode=hinge", "loss.mode"),
        ("loss.real_label=1.5", "loss.real_label"),
        ("loss.d_steps=0", "loss.d_steps"),
        ("loss.d_betas=[0.5]", "loss.d_betas"),
        ("loss.reconstruction=-1", "loss.reconstruction"),
    ],
)
def test_bad_gan_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        gan_task(override)


def test_gan_settings_are_refused_with_the_mse_loss() -> None:
    config = compose([*TINY[:-1], "loss=mse", "+loss.noise=0.1"])
    with pytest.raises(ConfigError, match="loss"):
        task_class("edges2emoji")(parse_run_config(config))


def test_discriminator_too_deep_for_the_grid_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"loss\.d_depth"):
        gan_task("loss.d_depth=4").build_cotrained(torch.device("cpu"))


@pytest.mark.parametrize("mode", ["bce", "wgan_gp"])
def test_adversarial_training_resumes_exactly(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = compose([*TINY, f"loss.mode={mode}", "trainer.iterations=4", "pool_size=4"])
    train(config, tmp_path / "full")

    original = Trainer.train_step

    def step(self: Trainer) -> Any:
        out = original(self)
        if self.iteration == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(Interrupted):
        train(config, tmp_path / "resumed")
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert checkpoint["iteration"] == 2
    train(config, tmp_path / "resumed", checkpoint)

    full = load_checkpoint(tmp_path / "full" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert resumed["iteration"] == full["iteration"] == 4
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    critic = full["cotrained"]["critic"]
    assert critic and all(
        torch.equal(v, resumed["cotrained"]["critic"][k]) for k, v in critic.items()
    )
    moments = full["cotrained"]["optimizer"]["state"]
    for k, v in moments.items():
        assert torch.equal(v["exp_avg"], resumed["cotrained"]["optimizer"]["state"][k]["exp_avg"])
    assert torch.equal(full["cotrained"]["generator"], resumed["cotrained"]["generator"])
    rows = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    again = [
        json.loads(r) for r in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows == again
    assert all("d_loss" in row for row in rows)
    if mode == "wgan_gp":
        assert all({"critic_gap", "gradient_penalty"} <= set(row) for row in rows)


def test_a_checkpoint_without_the_discriminator_does_not_resume(tmp_path: Path) -> None:
    from nca_cli.training.checkpoint import CheckpointError

    config = compose([*TINY, "trainer.iterations=1", "pool_size=4"])
    train(config, tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.ckpt")
    checkpoint.pop("cotrained")
    with pytest.raises(CheckpointError, match="does not fit"):
        train(config, tmp_path / "run", checkpoint)
