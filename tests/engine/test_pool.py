"""The sample pool: sampling, committing, renewal by loss."""

from __future__ import annotations

import pytest
import torch

from nca_cli.config import ConfigError
from nca_cli.engine.damage import DamageConfig
from nca_cli.engine.pool import Batch, PoolConfig, SamplePool, renew, validate_pool


def test_pool_sample_returns_distinct_copies_and_commit_writes_back() -> None:
    torch.manual_seed(9)
    data = {"state": torch.randn(16, 4, 6, 6), "id": torch.arange(16)}
    pool = SamplePool({k: v.clone() for k, v in data.items()})
    assert pool.size == 16
    idx, batch = pool.sample(8, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 8
    assert torch.equal(batch["id"], idx)
    assert torch.equal(batch["state"], data["state"][idx])
    batch["state"] += 1.0
    batch["id"][:] = -1
    assert torch.equal(pool.data["state"], data["state"])
    assert torch.equal(pool.data["id"], data["id"])
    pool.commit(idx, batch)
    assert torch.equal(pool.data["state"][idx], data["state"][idx] + 1.0)
    assert bool((pool.data["id"][idx] == -1).all())
    rest = torch.ones(16, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(pool.data["state"][rest], data["state"][rest])
    idx2, _ = pool.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(idx, idx2)


LOSSES = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4])
BY_LOSS = [1, 6, 4, 3, 7, 0, 5, 2]  # indices ordered from worst (highest loss) to best


def ones_batch() -> Batch:
    return {"state": torch.ones(8, 5, 24, 24), "id": torch.arange(8)}


def fresh(n: int) -> Batch:
    return {"state": torch.zeros(n, 5, 24, 24), "id": torch.full((n,), -1)}


def no_mutation(batch: Batch) -> Batch:
    raise AssertionError("mutate must not be called when cfg.mutate == 0")


@pytest.mark.parametrize("wipe_from", [0, 2])
def test_renew_replaces_worst_and_damages_best(wipe_from: int) -> None:
    cfg = PoolConfig(size=16, replace=1, damage=DamageConfig(count=3))
    out = renew(
        ones_batch(), LOSSES, cfg, fresh, no_mutation, wipe_from, torch.Generator().manual_seed(0)
    )
    assert out["id"].tolist() == [-1, *BY_LOSS[1:]]
    assert torch.count_nonzero(out["state"][0]) == 0  # the fresh sample, not damaged
    for i in range(1, 5):
        assert bool((out["state"][i] == 1).all()), i
    for i in range(5, 8):
        s = out["state"][i]
        assert bool((s[:wipe_from] == 1).all())
        damaged = s[wipe_from:]
        assert bool((damaged == 0).any()) and bool((damaged == 1).any())
        assert set(damaged.unique().tolist()) == {0.0, 1.0}
        # One mask per sample, shared by every wiped channel.
        assert bool((damaged == damaged[:1]).all())


def test_renew_orders_by_loss_without_replacement() -> None:
    cfg = PoolConfig(size=16, replace=0, damage=DamageConfig(count=0))
    out = renew(ones_batch(), LOSSES, cfg, fresh, no_mutation, 0, None)
    assert out["id"].tolist() == BY_LOSS
    assert bool((out["state"] == 1).all())


def test_renew_hands_the_next_samples_to_mutation() -> None:
    seen: list[list[int]] = []

    def mutate(part: Batch) -> Batch:
        seen.append(part["id"].tolist())
        return {"state": part["state"] * 3, "id": part["id"] + 100}

    cfg = PoolConfig(size=16, replace=1, mutate=2, damage=DamageConfig(count=0))
    out = renew(ones_batch(), LOSSES, cfg, fresh, mutate, 0, None)
    assert seen == [BY_LOSS[1:3]]
    assert out["id"].tolist() == [-1, BY_LOSS[1] + 100, BY_LOSS[2] + 100, *BY_LOSS[3:]]
    assert bool((out["state"][1:3] == 3).all())
    assert bool((out["state"][3:] == 1).all())


def test_validate_pool() -> None:
    ok = PoolConfig(size=16, replace=4, mutate=1, damage=DamageConfig(count=3))
    validate_pool(ok, 8, "pool")
    validate_pool(PoolConfig(size=0, replace=100), 8, "pool")  # no pool: nothing to check
    too_many = PoolConfig(size=16, replace=4, mutate=2, damage=DamageConfig(count=3))
    with pytest.raises(ConfigError, match=r"pool\.replace"):
        validate_pool(too_many, 8, "pool")
    with pytest.raises(ConfigError, match=r"pool\.size"):
        validate_pool(PoolConfig(size=4), 8, "pool")
    with pytest.raises(ConfigError, match=r"pool\.damage\.kind"):
        validate_pool(PoolConfig(size=16, damage=DamageConfig(kind="star")), 8, "pool")
