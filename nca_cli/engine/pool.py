"""The sample pool: states carried across iterations so the NCA learns to persist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nca_cli.config import require
from nca_cli.engine.damage import DamageConfig, damage_mask, validate_damage

Batch = dict[str, Tensor]


@dataclass
class PoolConfig:
    """``size`` 0 trains from fresh seeds every iteration (growing mode). Otherwise each
    batch is drawn from the pool, its ``replace`` highest-loss samples are replaced by fresh
    ones, the next ``mutate`` are handed to the task's mutation, and the ``damage.count``
    lowest-loss samples are damaged (the Distill persistent and regenerating modes).
    ``order: random`` skips the ranking: the batch keeps the random order it was drawn in,
    so the renewed rows are random ones (the self-classifying MNIST notebook)."""

    size: int = 0
    replace: int = 1
    mutate: int = 0
    order: str = "loss"
    damage: DamageConfig = field(default_factory=DamageConfig)

    def ignored(self) -> dict[str, str]:
        if self.size:
            return {}
        why = (
            "task.pool.size is 0: every batch starts from fresh samples (pool_size=N gives a pool)"
        )
        return dict.fromkeys(("replace", "mutate", "order", "damage"), why)

    @property
    def ranked(self) -> bool:
        """Whether renewal needs the batch's losses (``order: loss``)."""
        return self.order == "loss"


ORDERS = ("loss", "random")


def validate_pool(cfg: PoolConfig, batch_size: int, where: str) -> None:
    require(cfg.size >= 0, f"{where}.size", cfg.size, "an integer >= 0 (0: no pool)")
    require(cfg.order in ORDERS, f"{where}.order", cfg.order, "one of " + ", ".join(ORDERS))
    if cfg.size == 0:
        return
    require(
        cfg.size >= batch_size,
        f"{where}.size",
        cfg.size,
        f"0 or at least trainer.batch_size ({batch_size})",
    )
    used = cfg.replace + cfg.mutate + cfg.damage.count
    require(
        cfg.replace >= 0 and cfg.mutate >= 0 and used <= batch_size,
        f"{where}.replace",
        cfg.replace,
        f"replace + mutate + damage.count ({used}) between 0 and the batch size ({batch_size})",
    )
    validate_damage(cfg.damage, f"{where}.damage")


class SamplePool:
    """A fixed-size store of samples; each sample is a row of every tensor in ``data``."""

    def __init__(self, data: Batch) -> None:
        sizes = {len(v) for v in data.values()}
        assert len(sizes) == 1, "all pool tensors need the same first dimension"
        self.data = data
        self.size = sizes.pop()

    def sample(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Batch]:
        """Draw ``n`` distinct samples; returns their indices and copies of their rows. The
        indices are drawn where ``generator`` lives: on the pool's device, no host copy."""
        device = generator.device if generator is not None else None
        idx = torch.randperm(self.size, generator=generator, device=device)[:n]
        return idx, {k: v[idx].clone() for k, v in self.data.items()}

    def commit(self, idx: Tensor, batch: Batch) -> None:
        """Write the rows of ``batch`` back at ``idx``."""
        for k, v in batch.items():
            self.data[k][idx] = v.detach().to(self.data[k].dtype).contiguous()

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.data)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        assert set(state) == set(self.data), "pool keys differ from the task's samples"
        self.data = {k: v.clone() for k, v in state.items()}


def renew(
    batch: Batch,
    losses: Tensor | None,
    cfg: PoolConfig,
    fresh: Callable[[int], Batch],
    mutate: Callable[[Batch], Batch],
    wipe_from: int,
    generator: torch.Generator | None,
) -> Batch:
    """Order a pooled batch by loss (worst first; ``losses`` None under ``order: random``,
    which keeps the drawn order) and renew it as ``cfg`` says.

    ``wipe_from`` is the first channel damage may wipe: fixed input channels survive.
    ``generator`` draws the damage masks, on its own device.
    """
    if losses is not None:
        order = torch.argsort(losses, descending=True)
        batch = {k: v[order] for k, v in batch.items()}
    r, m, d = cfg.replace, cfg.mutate, cfg.damage.count
    if r:
        new = fresh(r)
        for k in batch:
            batch[k][:r] = new[k]
    if m:
        part = mutate({k: v[r : r + m] for k, v in batch.items()})
        for k in batch:
            batch[k][r : r + m] = part[k]
    if d:
        state = batch["state"]
        _, _, h, w = state.shape
        mask = damage_mask(cfg.damage, d, h, w, generator).to(state.dtype)
        state[-d:, wipe_from:] = state[-d:, wipe_from:] * mask
    return batch
