"""The real tasks: data, splits, metrics, end-to-end training, learning on shapes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.datasets.splits import random_split
from nca_cli.datasets.storage import DataError
from nca_cli.engine.cascade import CascadeNCA, build_model
from nca_cli.tasks import task_class
from nca_cli.tasks._segmentation import dice_score, iou_score
from nca_cli.tasks.base import Task
from nca_cli.tasks.medmnist import classification_metrics
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import train

SMOKE = ["trainer=smoke", "logger=none"]
STEPS4 = ["trainer.steps.min=4", "trainer.steps.max=4"]
# Each task with overrides that keep its smoke training to seconds.
TASKS = {
    "growing": ["task=growing"],
    "emoji_conditional": ["task=emoji_conditional", "dataset.size=12", "dataset.padding=4"],
    "shapes": ["task=shapes", "dataset.samples=20", "dataset.size=16"],
    "kvasir": ["task=kvasir", "dataset.size=16", "dataset.download=false", *STEPS4],
    "kvasir_dilated": ["task=kvasir", "perception=dilated", "dataset.size=16", *STEPS4],
    "mnist": [
        "task=mnist",
        "task.evaluation.samples=8",
        "task.evaluation.window=[2,4]",
        "task.evaluation.final=6",
        "trainer.steps.min=4",
        "trainer.steps.max=4",
        "dataset.download=false",
    ],
    "medmnist": [
        "task=medmnist",
        "dataset.name=pneumoniamnist",
        "trainer.steps.min=4",
        "trainer.steps.max=4",
        "dataset.download=false",
    ],
}


def make_task(*overrides: str) -> tuple[Task, dict[str, Any]]:
    config = compose([*SMOKE, *overrides])
    return task_class(config["task"]["name"])(parse_run_config(config)), config


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_trains_end_to_end_on_real_files(name: str, tmp_path: Path) -> None:
    config = compose([*SMOKE, *TASKS[name]])
    metrics = train(config, tmp_path)
    assert metrics, name
    assert all(np.isfinite(v) for k, v in metrics.items() if "auroc" not in k), metrics
    assert (tmp_path / "final.png").is_file()
    task = task_class(config["task"]["name"])(parse_run_config(config))
    assert task.objective[0] in metrics
    if task.splits is not None:
        saved = json.loads((tmp_path / "splits.json").read_text())
        assert saved == task.splits


@pytest.mark.parametrize("name", ["shapes", "kvasir", "mnist", "medmnist"])
def test_splits_are_disjoint_and_seeded(name: str) -> None:
    task, _ = make_task(*TASKS[name])
    assert task.splits is not None
    parts = [set(task.splits[s]) for s in ("train", "val", "test")]
    assert parts[0] and parts[1]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    again, _ = make_task(*TASKS[name])
    assert again.splits == task.splits


def test_official_medmnist_split_sizes() -> None:
    task, _ = make_task(*TASKS["medmnist"])
    assert task.splits is not None
    assert {k: len(v) for k, v in task.splits.items()} == {
        "train": 4708,
        "val": 524,
        "test": 624,
    }


def test_random_split_stratifies_and_reproduces() -> None:
    ids = [f"c{i}" for i in range(200)]
    labels = [0] * 150 + [1] * 50
    split = random_split(ids, 0.2, 0.1, seed=3, labels=labels)
    assert split == random_split(ids, 0.2, 0.1, seed=3, labels=labels)
    assert split != random_split(ids, 0.2, 0.1, seed=4, labels=labels)
    by_id = dict(zip(ids, labels, strict=True))
    assert [by_id[c] for c in split["val"]].count(1) == 10
    assert [by_id[c] for c in split["test"]].count(1) == 5
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)


def test_dice_and_iou_on_known_masks() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 cells
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., :1, :] = 1  # 4 cells, all inside the target
    assert dice_score(pred, target).item() == pytest.approx(2 * 4 / (4 + 8))
    assert iou_score(pred, target).item() == pytest.approx(4 / 8)
    empty = torch.zeros(1, 1, 4, 4)
    assert dice_score(empty, empty).item() == pytest.approx(1.0)


def test_classification_metrics_on_known_scores() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(probs, labels)
    assert m["auroc"] == pytest.approx(1.0)  # every positive outranks every negative
    assert m["accuracy"] == pytest.approx(0.75)
    swapped = classification_metrics(torch.tensor([[0.2, 0.8], [0.9, 0.1]]), torch.tensor([0, 1]))
    assert swapped["auroc"] == pytest.approx(0.0) and swapped["accuracy"] == 0.0
    three = classification_metrics(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 1]))
    assert three["accuracy"] == pytest.approx(0.75)
    assert 0.0 < three["f1"] < 1.0


def test_mnist_preset_is_the_published_22499_parameters() -> None:
    task, config = make_task(*TASKS["mnist"])
    run = parse_run_config(config)
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
    assert sum(p.numel() for p in nca.parameters()) == 22499
    assert task.layout.channels == 20 and task.layout.inputs == 1 and task.layout.visible == 10
    assert run.model.update_noise == 0.02 and run.model.fire_rate == 0.5
    pool = config["task"]["pool"]
    assert (pool["size"], pool["replace"], pool["mutate"]) == (160, 4, 4)


def test_mnist_model_masks_exactly_the_cells_with_input_at_most_0_1() -> None:
    """Alive = input > 0.1 (Randazzo et al.), no 3x3 max-pool: the digit's border cells die."""
    task, config = make_task(*TASKS["mnist"])
    run = parse_run_config(config)
    assert run.model.alive_pool is False
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
    assert not isinstance(nca, CascadeNCA) and nca.alive_channel == 0
    torch.nn.init.normal_(nca.update.layers[-1].bias, std=0.1)  # every update non-zero
    nca.fire_rate = 1.0
    state = task.fresh(4, torch.Generator().manual_seed(0))["state"]
    state[:, 1:] = torch.rand_like(state[:, 1:]) + 0.5
    dead = state[:, :1] <= 0.1
    assert dead.any() and (~dead).any()
    assert torch.equal(nca.alive(state), ~dead)
    assert torch.equal(task.alive(state).bool(), ~dead)
    for fast in (True, False):
        nca.engine = "fused" if fast else "reference"
        with torch.no_grad():
            out, _ = nca.rollout(state, 2, torch.Generator().manual_seed(1))
        assert torch.equal(out[:, :1], state[:, :1])  # the input stays
        assert (out[:, 1:] == 0).all(1, keepdim=True).eq(dead).all(), fast


def test_mnist_accuracy_and_agreement_on_hand_made_votes() -> None:
    """Only living cells (input > 0.1) count; agreement is the majority's share."""
    task, _ = make_task(*TASKS["mnist"])
    state = torch.zeros(2, task.layout.channels, 3, 3)
    state[:, 0, 0, :] = 0.5  # row 0 and cell (1, 0) alive: 4 cells
    state[:, 0, 1, 0] = 0.9
    votes = task.layout.visible_slice
    state[:, votes.start + 7] = 1.0  # every cell votes 7, the dead ones included
    alive_votes = [(0, 0), (0, 1), (0, 2), (1, 0)]
    for (y, x), vote in zip(alive_votes, [3, 3, 3, 5], strict=True):  # sample 0: label 3
        state[0, votes, y, x] = torch.eye(10)[vote]
    for (y, x), vote in zip(alive_votes, [1, 1, 2, 2], strict=True):  # sample 1: label 0
        state[1, votes, y, x] = torch.eye(10)[vote]
    out = task.predict(state, {"state": state, "label": torch.tensor([3, 0])})
    torch.testing.assert_close(out["accuracy"], torch.tensor([0.75, 0.0]))
    torch.testing.assert_close(out["agreement"], torch.tensor([0.75, 0.5]))


def test_mnist_evaluation_averages_steps_20_to_30_and_scores_step_200() -> None:
    """A fake rollout whose cells all vote ``step % 10``: the window holds steps 20..30
    (both ends, 11 values) and the final figure is step 200's."""
    task, _ = make_task(
        *TASKS["mnist"], "task.evaluation.window=[20,30]", "task.evaluation.final=200"
    )
    clock = task.layout.visible_slice.stop  # a hidden channel counts the steps

    def rollout(state: torch.Tensor, steps: int) -> torch.Tensor:
        state = state.clone()
        state[:, clock] += steps
        step = int(state[0, clock, 0, 0])
        state[:, task.layout.visible_slice] = torch.eye(10)[step % 10].view(1, 10, 1, 1)
        return state

    metrics = task.evaluate(rollout, "val", 3, steps=0)
    labels = task.labels[task.rows["val"][:8]]
    window = [sum(t % 10 == int(y) for t in range(20, 31)) / 11 for y in labels]
    assert metrics["accuracy_20_30"] == pytest.approx(sum(window) / 8)
    assert metrics["accuracy"] == pytest.approx(float((labels == 0).float().mean()))
    assert metrics["agreement"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(set(TASKS) - {"kvasir_dilated"}))
def test_eval_protocol_runs_on_every_task(name: str, tmp_path: Path) -> None:
    """What `nca eval` runs, with damage and, where the task mutates, with mutation."""
    from nca_cli.evaluation.runs import load_run
    from nca_cli.measures.protocol import ProtocolConfig, figures, run_protocol
    from nca_cli.measures.steps import ProtocolSteps

    train(compose([*SMOKE, *TASKS[name]]), tmp_path)
    loaded = load_run(tmp_path / "last.ckpt")
    steps = ProtocolSteps(stage1=[2, 3], stage2=4, perturb_at=5, stage3=8)
    cfg = ProtocolConfig(steps=steps, samples=3, curve_every=0, detail=False)
    perturbations = [cfg] + (
        [replace(cfg, damage=None, mutate=True)] if loaded.task.mutable else []
    )
    assert loaded.task.mutable == (name in ("mnist", "emoji_conditional"))
    for protocol in perturbations:
        result = figures(run_protocol(loaded.task, loaded.nca, protocol))
        assert result["recovery_pct"]["metric"] in ("lpips", loaded.task.objective[0])
        stage3 = result[f"{result['recovery_pct']['metric']}_stage3"]
        assert np.isfinite(stage3["mean"]), (name, protocol.mutate, stage3)


def test_mutations_switch_the_condition_and_keep_the_state() -> None:
    """MNIST: the cells the new digit keeps alive keep their state, the others lose it
    before the next step perceives them (as the notebook's mutation does)."""
    g = torch.Generator().manual_seed(0)
    task, _ = make_task(*TASKS["mnist"])
    batch = task.fresh(6, g)
    batch["state"][:, 1:] = torch.rand_like(batch["state"][:, 1:])
    mutated = task.mutate(batch, g)
    assert (mutated["label"] != batch["label"]).all()
    alive = task.alive(mutated["state"])
    assert 0 < float(alive.mean()) < 1
    assert torch.equal(mutated["state"][:, 1:], batch["state"][:, 1:] * alive)
    assert not torch.equal(mutated["state"][:, :1], batch["state"][:, :1])

    task, _ = make_task(*TASKS["emoji_conditional"])
    batch = task.fresh(6, g)
    mutated = task.mutate(batch, g)
    cond = task.layout.condition_slice
    assert (mutated["label"] != batch["label"]).all()
    assert (mutated["state"][:, cond].argmax(1) == mutated["label"].view(-1, 1, 1)).all()
    assert torch.equal(mutated["state"][:, cond.stop :], batch["state"][:, cond.stop :])


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCA_DATA_DIR", str(tmp_path / "empty"))
    for name, hint in (("kvasir", "Kvasir-SEG"), ("mnist", "MNIST"), ("medmnist", "npz")):
        with pytest.raises(DataError, match=hint) as info:
            make_task(*TASKS[name])
        assert str(tmp_path / "empty") in str(info.value)


def test_unpaired_or_corrupt_kvasir_files_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    folder = tmp_path / "Kvasir-SEG"
    shutil.copytree(shared_data / "Kvasir-SEG", folder)
    monkeypatch.setenv("NCA_DATA_DIR", str(tmp_path))
    first = sorted((folder / "masks").iterdir())[0]
    first.unlink()
    with pytest.raises(DataError, match=f"{first.stem}.*has no mask"):
        make_task(*TASKS["kvasir"])
    shutil.copy(sorted((folder / "masks").iterdir())[0], first)
    first.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image"):
        make_task(*TASKS["kvasir"])


def test_cascade_model_runs_coarse_to_fine() -> None:
    task, config = make_task(*TASKS["kvasir"], "model=cascade")
    run = parse_run_config(config)
    model = build_model(run.model, run.perception, task.layout, task.alive_channel)
    assert isinstance(model, CascadeNCA) and model.scales == [4, 2, 1]
    single = build_model(
        parse_run_config(compose([*SMOKE, *TASKS["kvasir"]])).model,
        run.perception,
        task.layout,
        task.alive_channel,
    )
    assert sum(p.numel() for p in model.parameters()) == 3 * sum(
        p.numel() for p in single.parameters()
    )
    batch = task.fresh(2, torch.Generator())
    for level in model.levels:  # make every level change the state
        torch.nn.init.normal_(level.update.layers[-1].bias, std=0.1)
    out, states = model.rollout(batch["state"], 3, torch.Generator(), trajectory=True)
    assert out.shape == batch["state"].shape and len(states) == 9
    assert torch.equal(out[:, :3], batch["state"][:, :3])  # the image stays fixed


def test_bad_task_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.name"):
        make_task("task=medmnist", "dataset.name=cifar")
    with pytest.raises(ConfigError, match=r"model\.scales"):
        parse_run_config(compose([*SMOKE, "model.scales=[2]"]))


def test_shapes_validation_dice_rises_within_a_minute(tmp_path: Path) -> None:
    config = compose(
        [
            "logger=none",
            "trainer.progress=false",
            "task=shapes",
            "dataset.size=24",
            "dataset.samples=200",
            "trainer.iterations=100",
            "trainer.steps.min=16",
            "trainer.steps.max=20",
            "trainer.batch_size=8",
            "hidden=48",
        ]
    )
    before = train({**config, "trainer": {**config["trainer"], "iterations": 0}}, tmp_path / "a")
    after = train(config, tmp_path / "b")
    assert after["dice"] > before["dice"] + 0.25, (before["dice"], after["dice"])


def test_mnist_review_recipe_state_loss_and_model() -> None:
    """experiment=mnist_review as NCAtorch builds it: 12 px padding, channel 0 the digit's
    mask, the grey image in the other 19 channels, MSE over every cell plus overflow."""
    config = compose(["experiment=mnist_review", "logger=none"])
    run = parse_run_config(config)
    task = task_class("mnist")(run)
    batch = task.fresh(3, torch.Generator().manual_seed(0))
    state = batch["state"]
    assert state.shape[-2:] == (52, 52) and not state[..., :12, :].any()
    grey = task.images[task.rows["train"][:1]]  # the images are padded once, at loading
    assert grey.shape[-2:] == (52, 52)
    assert set(state[:, 0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(state[:, 0] > 0, state[:, 1] > 0.1)
    assert torch.equal(state[:, 1:], state[:, 1:2].expand(-1, 19, -1, -1))
    # MSE over B x 10 x H x W (dead cells' target 0) + mean |v - clamp(v, 0, 1)|
    votes = task.votes(state)
    onehot = torch.nn.functional.one_hot(batch["label"], 10).float()[..., None, None]
    target = onehot * (state[:, :1] > 0.1)
    expected = ((votes - target) ** 2).flatten(1).mean(1)
    expected += (votes - votes.clamp(0, 1)).abs().flatten(1).mean(1)
    torch.testing.assert_close(task.loss(state, batch), expected)
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
    assert sum(p.numel() for p in nca.parameters()) == 22499
    x = torch.linspace(-1, 1, 5)
    torch.testing.assert_close(nca.update.act(x), torch.where(x > 0, x, 0.2 * x))
    assert run.model.alive_pool and run.model.padding == "circular"
    t = run.trainer
    assert (t.batch_size, t.steps.min, t.steps.max, t.grad.clip_norm) == (18, 20, 29, 1.0)
    assert (t.schedule.name, t.schedule.warmup, t.optimizer.lr) == ("cosine", 5000, 2e-3)
