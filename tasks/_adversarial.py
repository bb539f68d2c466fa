"""Adversarial training of an NCA (GANCA, Otte et al. 2021): the rollout is the generator,
a small convolutional discriminator (critic) judges real images against the NCA's final
states, conditioned on extra channels (the starting edge image).

Two losses: the non-saturating binary cross-entropy with label smoothing (``mode=bce``),
and the Wasserstein loss with gradient penalty (``mode=wgan_gp``, Gulrajani et al. 2017),
the penalty taken on the image channels only. A task uses :class:`Adversary` as its
:class:`~nca_cli.tasks.base.CoTrained` module: the trainer steps the discriminator once per
iteration and checkpoints it; the task adds :meth:`Adversary.generator_loss` to its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nca_cli.config import choice, require
from nca_cli.engine.pool import Batch
from nca_cli.tasks.base import CoTrained, LossConfig

MODES = ("bce", "wgan_gp")


@dataclass
class GanConfig(LossConfig):
    """``loss=gan``. ``reconstruction``: weight of the MSE to the target in the generator's
    loss (0: purely adversarial); ``noise``: std of Gaussian noise added to the image
    channels the discriminator sees; ``real_label``/``fake_label``: the discriminator's
    smoothed BCE targets; ``gp_weight``: the gradient penalty's weight (``wgan_gp``);
    ``d_steps``: discriminator steps per generator step; ``d_lr``, ``d_betas``: its Adam;
    ``d_width``: channels of its first layer (doubled at each of ``d_depth`` stride-2
    layers)."""

    name: str = "gan"
    mode: str = "bce"
    reconstruction: float = 10.0
    noise: float = 0.05
    real_label: float = 0.9
    fake_label: float = 0.1
    gp_weight: float = 10.0
    d_steps: int = 1
    d_lr: float = 2e-4
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    d_width: int = 32
    d_depth: int = 3

    def ignored(self) -> dict[str, str]:
        if self.mode == "bce":
            return {"gp_weight": "loss.mode is 'bce': no gradient penalty"}
        why = f"loss.mode is {self.mode!r}: no BCE targets"
        return {"real_label": why, "fake_label": why}


def validate_gan(cfg: GanConfig, where: str = "loss") -> None:
    choice(cfg.mode, list(MODES), f"{where}.mode")
    for key in ("reconstruction", "noise", "gp_weight"):
        value = getattr(cfg, key)
        require(value >= 0, f"{where}.{key}", value, "a number >= 0")
    for key in ("real_label", "fake_label"):
        value = getattr(cfg, key)
        require(0 <= value <= 1, f"{where}.{key}", value, "a probability in [0, 1]")
    require(cfg.d_steps >= 1, f"{where}.d_steps", cfg.d_steps, "an integer >= 1")
    require(cfg.d_lr > 0, f"{where}.d_lr", cfg.d_lr, "a positive number")
    betas = cfg.d_betas
    require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        f"{where}.d_betas",
        betas,
        "two numbers in [0, 1)",
    )
    require(cfg.d_width >= 1, f"{where}.d_width", cfg.d_width, "a positive integer")
    require(cfg.d_depth >= 1, f"{where}.d_depth", cfg.d_depth, "a positive integer")


class Discriminator(nn.Module):
    """Stride-2 4x4 convolutions with LeakyReLU (no normalisation, which the gradient
    penalty forbids), a 3x3 convolution to one score per patch, and the mean over patches:
    one logit (or critic value) per sample."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers += [nn.Conv2d(c, width * 2**i, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = width * 2**i
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([images, condition], dim=1)).mean(dim=(1, 2, 3))


def bce_discriminator_loss(
    real: Tensor, fake: Tensor, real_label: float = 0.9, fake_label: float = 0.1
) -> Tensor:
    """Binary cross-entropy of the logits of real and fake samples against the smoothed
    labels, each averaged over its samples, summed."""
    return F.binary_cross_entropy_with_logits(
        real, torch.full_like(real, real_label)
    ) + F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, fake_label))


def bce_generator_loss(fake: Tensor) -> Tensor:
    """Per-sample non-saturating loss −log σ(D(fake)): the generator aims at label 1
    (smoothing is for the discriminator only)."""
    return F.softplus(-fake)


def wasserstein_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """mean D(fake) − mean D(real): the critic maximises the gap."""
    return fake.mean() - real.mean()


def wasserstein_generator_loss(fake: Tensor) -> Tensor:
    """Per-sample −D(fake)."""
    return -fake


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, weights: Tensor
) -> Tensor:
    """mean over samples of (‖∇ₓ critic(x̂)‖₂ − 1)², x̂ = w·real + (1 − w)·fake with one
    weight per sample; ``critic`` takes the image channels only (any condition is bound
    inside it), so the gradient, and the penalty, are those of the image channels."""
    w = weights.view(-1, *([1] * (real.dim() - 1))).to(real)
    mixed = (w * real.detach() + (1 - w) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


# (final states, batch) -> (fake images with their graph, real images, condition)
Inputs = Callable[[Tensor, Batch], tuple[Tensor, Tensor, Tensor]]


class Adversary(CoTrained):
    """A conditional discriminator with its own Adam and random stream.

    ``inputs`` tells it, for a task's final states and batch, the generated images, the
    real ones and the condition. Its random numbers (input noise, penalty mixing weights)
    come from its own seeded CPU generator, saved with it, so resumed runs are exact.
    """

    def __init__(
        self,
        cfg: GanConfig,
        image_channels: int,
        condition_channels: int,
        inputs: Inputs,
        device: torch.device,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.inputs = inputs
        self.critic = Discriminator(image_channels + condition_channels, cfg.d_width, cfg.d_depth)
        self.critic.to(device)
        b1, b2 = cfg.d_betas
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.d_lr, betas=(b1, b2))
        self.generator = torch.Generator().manual_seed(seed)

    def _noisy(self, images: Tensor) -> Tensor:
        if not self.cfg.noise:
            return images
        noise = torch.randn(images.shape, generator=self.generator) * self.cfg.noise
        return images + noise.to(images)

    def score(self, images: Tensor, condition: Tensor) -> Tensor:
        """Per-sample logits (BCE) or critic values (WGAN) of noised images."""
        return self.critic(self._noisy(images.float()), condition.float())

    def generator_loss(self, state: Tensor, batch: Batch) -> Tensor:
        """Per-sample adversarial loss of the final states (gradients reach the NCA)."""
        fake, _, condition = self.inputs(state, batch)
        scores = self.score(fake, condition)
        if self.cfg.mode == "bce":
            return bce_generator_loss(scores)
        return wasserstein_generator_loss(scores)

    def update(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``d_steps`` discriminator steps on the iteration's (detached) final states;
        returns the last step's loss (and the critic gap and penalty for WGAN), on the
        device."""
        fake, real, condition = (t.detach().float() for t in self.inputs(state, batch))
        out: dict[str, Tensor] = {}
        for _ in range(self.cfg.d_steps):
            self.optimizer.zero_grad(set_to_none=True)
            real_in, fake_in = self._noisy(real), self._noisy(fake)
            real_scores = self.critic(real_in, condition)
            fake_scores = self.critic(fake_in, condition)
            if self.cfg.mode == "bce":
                loss = bce_discriminator_loss(
                    real_scores, fake_scores, self.cfg.real_label, self.cfg.fake_label
                )
                out = {"d_loss": loss.detach()}
            else:
                weights = torch.rand(len(real), generator=self.generator)
                penalty = gradient_penalty(
                    lambda x: self.critic(x, condition), real_in, fake_in, weights
                )
                loss = wasserstein_discriminator_loss(real_scores, fake_scores)
                loss = loss + self.cfg.gp_weight * penalty
                gap = real_scores.detach().mean() - fake_scores.detach().mean()
                out = {
                    "d_loss": loss.detach(),
                    "critic_gap": gap,
                    "gradient_penalty": penalty.detach(),
                }
            loss.backward()
            self.optimizer.step()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
