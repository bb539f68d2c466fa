"""Training loop, config tree, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import signal
import threading
import typing
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.engine.nca import build_nca
from nca_cli.engine.schema import ModelConfig
from nca_cli.tasks import available_tasks, task_class
from nca_cli.training.checkpoint import CheckpointError, load_checkpoint
from nca_cli.training.interrupts import Interrupted
from nca_cli.training.loggers import NullLogger
from nca_cli.training.schema import LoggerConfig, TrainerConfig, parse_run_config
from nca_cli.training.trainer import (
    DivergenceError,
    StepResult,
    Trainer,
    draw_steps,
    train,
)

SMOKE = ["trainer=smoke", "logger=none"]


OTHERS = ("reproduce", "protocol")  # config groups that are not options of a training run


def presets() -> list[tuple[str, str]]:
    """Every (group, option) of the shipped config tree (conf/reproduce holds reproductions,
    not training presets: tests/reproduction/test_reproduce.py checks them; conf/protocol
    holds the protocol steps that the trainer presets load)."""
    root = resources.files("nca_cli.conf")
    found = []
    for group in root.iterdir():
        if group.is_dir() and not group.name.startswith("_") and group.name not in OTHERS:
            for option in group.iterdir():
                if option.name.endswith(".yaml"):
                    found.append((group.name, option.name.removesuffix(".yaml")))
    return sorted(found)


def build(config: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    run = parse_run_config(config)
    task = task_class(run.task["name"])(run)
    return task, build_nca(run.model, run.perception, task.layout, task.alive_channel)


def test_config_tree_has_the_documented_groups() -> None:
    groups = Counter(group for group, _ in presets())
    for group in ("task", "model", "perception", "dataset", "loss", "trainer", "logger"):
        assert groups[group] >= 1, group
    assert {"smoke", "default", "distill"} <= {o for g, o in presets() if g == "trainer"}
    assert "growing" in available_tasks()


def task_choosing(group: str, option: str) -> list[str]:
    """Dataset and loss presets belong to the tasks that select them."""
    if group not in ("dataset", "loss"):
        return []
    for task in resources.files("nca_cli.conf").joinpath("task").iterdir():
        lines = [line.strip() for line in task.read_text().splitlines()]
        if any(re.fullmatch(rf"- override /{group}(@\w+)?: {option}", line) for line in lines):
            return [f"task={task.name.removesuffix('.yaml')}"]
    return []


@pytest.mark.parametrize(("group", "option"), presets())
def test_every_preset_composes_and_builds(group: str, option: str) -> None:
    config = compose([*task_choosing(group, option), f"{group}={option}"])
    task, nca = build(config)
    state = task.fresh(1, torch.Generator())["state"]
    with torch.no_grad():
        out = nca.step(state)
    assert out.shape == state.shape


def levels(nca: torch.nn.Module) -> list[Any]:
    """The NCAs of a model: one, or each level of a cascade."""
    return list(getattr(nca, "levels", [nca]))


def hidden_sizes(trainer: Trainer) -> set[tuple[int, ...]]:
    """The hidden layer sizes of every NCA of the model."""
    return {tuple(x.out_features for x in nca.update.layers[:-1]) for nca in levels(trainer.nca)}


def base_lr(group: dict[str, Any]) -> float:
    """The optimiser's learning rate before its schedule scales it (a warm-up starts at 0)."""
    return float(group.get("initial_lr", group["lr"]))


# A changed value for every shortcut key, and how to read it from the built objects.
SHORTCUT_VALUES: dict[str, tuple[Any, Any]] = {
    "seed": (7, lambda t: t.generator.initial_seed()),
    "fire_rate": (0.37, lambda t: {n.fire_rate for n in levels(t.nca)}),
    "hidden": (40, hidden_sizes),
    "lr": (3.3e-4, lambda t: base_lr(t.optimizer.param_groups[0])),
    "pool_size": (40, lambda t: t.pool.size if t.pool is not None else 0),
    "channels": (None, lambda t: t.task.layout.channels),  # the preset's channels + 4
}
READ_AS = {"fire_rate": lambda v: {v}, "hidden": lambda v: {(v,)}}


@pytest.mark.parametrize(("group", "option"), presets())
def test_every_shortcut_reaches_the_built_run_of_every_preset(
    group: str, option: str, tmp_path: Path
) -> None:
    chosen = [*task_choosing(group, option), f"{group}={option}", "logger=none"]
    base = Trainer(compose(chosen), tmp_path / "base")
    values = {k: v for k, (v, _) in SHORTCUT_VALUES.items()}
    values["channels"] = base.task.layout.channels + 4
    expected = {k: READ_AS.get(k, lambda v: v)(v) for k, v in values.items()}
    for key, (_, read) in SHORTCUT_VALUES.items():
        assert read(base) != expected[key], key  # a change, whatever the preset says
    trainer = Trainer(compose([*chosen, *(f"{k}={v}" for k, v in values.items())]), tmp_path)
    assert {key: read(trainer) for key, (_, read) in SHORTCUT_VALUES.items()} == expected


def unset_fields(node: dict[str, Any], schema: type, where: str) -> list[str]:
    """Fields of ``schema`` (and of its sections) that ``node`` leaves to their defaults."""
    hints = typing.get_type_hints(schema)
    found = []
    for f in dataclasses.fields(schema):
        if f.name not in node:
            found.append(f"{where}.{f.name}")
        elif dataclasses.is_dataclass(hints[f.name]):
            found += unset_fields(node[f.name], hints[f.name], f"{where}.{f.name}")
    return found


@pytest.mark.parametrize(("group", "option"), presets())
def test_every_preset_spells_out_the_model_trainer_and_logger(group: str, option: str) -> None:
    # A field left to its dataclass default cannot be overridden on the command line (Hydra
    # refuses a key the config lacks) and hides what runs from `--cfg job`.
    config = compose([*task_choosing(group, option), f"{group}={option}"])
    for section, schema in (("model", ModelConfig), ("trainer", TrainerConfig)):
        assert unset_fields(config[section], schema, section) == []
    assert unset_fields(config["logger"], LoggerConfig, "logger") == []


def test_distill_model_is_the_published_8336_parameters() -> None:
    config = compose(["experiment=distill"])
    task, nca = build(config)
    assert task.fresh(1, torch.Generator())["state"].shape[-2:] == (72, 72)
    assert sum(p.numel() for p in nca.parameters()) == 8336
    assert nca.perception.out_features == 48
    assert nca.fire_rate == 0.5 and nca.alive_threshold == 0.1
    t = parse_run_config(config).trainer
    assert (t.batch_size, t.iterations, t.steps.min, t.steps.max) == (8, 8000, 64, 95)
    assert t.optimizer.lr == 2e-3 and t.schedule.milestones == [2000] and t.grad.normalize
    assert config["task"]["pool"]["size"] == 1024
    assert config["task"]["pool"]["damage"]["count"] == 3


def test_shortcut_keys_name_their_fields() -> None:
    config = compose(["fire_rate=0.3", "channels=32", "hidden=64", "lr=1e-3", "seed=1"])
    run = parse_run_config(config)
    assert run.model.fire_rate == 0.3 and run.model.hidden == [64]
    assert run.trainer.optimizer.lr == 1e-3 and run.model.channels == 32 and run.seed == 1
    assert not {"fire_rate", "channels", "hidden", "lr", "pool_size"} & set(config)
    with pytest.raises(ConfigError, match=r"'fire_rate' and 'model.fire_rate'"):
        compose(["fire_rate=0.3", "model.fire_rate=0.4"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("fire_rate=abc", "fire_rate"),
        ("fire_rate=1.5", "fire_rate"),
        ("channels=3", "channels"),
        ("trainer.steps.min=100", "trainer.steps.max"),
        ("lr=-1", "lr"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("+perception.foo=1", "perception.foo"),
        ("+task.foo=1", "task.foo"),
        ("+perception.kernel_size=3", "perception.kernel_size"),  # sobel has no size
        ("perception=conv", None),
    ],
)
def test_bad_values_fail_before_work_naming_the_key(override: str, key: str | None) -> None:
    if key is None:  # control: a valid override builds
        build(compose([override]))
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(compose([override]))


def test_draw_steps_covers_both_ends_of_the_range() -> None:
    g = torch.Generator().manual_seed(0)
    seen = Counter(draw_steps(64, 66, g) for _ in range(3000))
    assert set(seen) == {64, 65, 66}
    assert min(seen.values()) > 800


def small(*extra: str) -> dict[str, Any]:
    return compose(
        [
            *SMOKE,
            "dataset.size=12",
            "dataset.padding=4",
            "trainer.steps.min=12",
            "trainer.steps.max=16",
            *extra,
        ]
    )


def losses(run_dir: Path) -> list[float]:
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["loss"] for r in rows]


def test_smoke_training_loss_falls(tmp_path: Path) -> None:
    config = small("task=growing", "trainer.iterations=40", "trainer.batch_size=4")
    metrics = train(config, tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert len(curve) == 40
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    for name in ("config.yaml", "last.ckpt", "final.png", "rollout.gif", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert metrics["mse"] < curve[0]


def interrupt_after(monkeypatch: pytest.MonkeyPatch, iterations: int) -> None:
    """Deliver a real SIGINT once the trainer has done ``iterations`` steps."""
    original = Trainer.train_step

    def step(self: Trainer) -> Any:
        out = original(self)
        if self.iteration == iterations:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)


def test_interrupted_run_resumes_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small("task=regenerating", "pool_size=8", "trainer.iterations=6")
    config["trainer"]["batch_size"] = 4
    train(config, tmp_path / "full")

    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted, match="resume="):
        train(config, tmp_path / "resumed")
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert checkpoint["iteration"] == 3 and checkpoint["seconds"] > 0
    checkpoint["seconds"] = 1000.0  # as if the first session had trained for long
    train(config, tmp_path / "resumed", checkpoint)
    # the run's training time adds this session's to what its checkpoint carried
    seconds = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["seconds"]
    assert 1000.0 < seconds < 1600.0

    full = load_checkpoint(tmp_path / "full" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert resumed["iteration"] == full["iteration"] == 6
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert torch.equal(full["pool"]["state"], resumed["pool"]["state"])
    assert torch.equal(full["rng"]["generator"], resumed["rng"]["generator"])
    assert losses(tmp_path / "full") == losses(tmp_path / "resumed")


def test_ctrl_c_during_set_up_stops_before_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while a resumed run loads (a KeyboardInterrupt inside OmegaConf once
    surfaced as an unrelated error) stops it cleanly with its checkpoint as it was."""
    config = small("task=persistent", "pool_size=4", "trainer.iterations=4")
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(config, tmp_path)
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "last.ckpt")
    rows_before = losses(tmp_path)

    pressed = []

    def parse_then_ctrl_c(cfg: dict[str, Any]) -> Any:
        if not pressed:  # once: a second Ctrl-C quits the process at once
            pressed.append(signal.raise_signal(signal.SIGINT))
        return parse_run_config(cfg)

    monkeypatch.setattr("nca_cli.training.trainer.parse_run_config", parse_then_ctrl_c)
    with pytest.raises(Interrupted, match="before iteration 3"):
        train(config, tmp_path, saved)
    again = load_checkpoint(tmp_path / "last.ckpt")
    assert again["iteration"] == 2
    for name, tensor in saved["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    assert losses(tmp_path) == rows_before


def test_checkpoint_round_trip_is_self_describing(tmp_path: Path) -> None:
    config = small("task=persistent", "pool_size=4")
    trainer = Trainer(config, tmp_path)
    trainer.train_step()
    path = trainer.save()
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == config and raw["iteration"] == 1
    assert {"torch", "nca", "python", "git_sha"} <= set(raw["environment"])
    for key in ("model", "optimizer", "scheduler", "pool", "rng"):
        assert raw[key] is not None, key

    other = Trainer(config, tmp_path)
    other.load_state_dict(load_checkpoint(path))
    for name, tensor in trainer.nca.state_dict().items():
        assert torch.equal(tensor, other.nca.state_dict()[name])
    assert other.optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(other.pool.data["state"], trainer.pool.data["state"])  # type: ignore[union-attr]


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = small()
    path = Trainer(config, tmp_path).save()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.ckpt")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small("trainer.iterations=5", "trainer.checkpoint_every=1")
    nan_at_training_call(monkeypatch, 3)
    with pytest.raises(DivergenceError, match="iteration 3"):
        train(config, tmp_path)
    assert load_checkpoint(tmp_path / "last.ckpt")["iteration"] == 2


def nan_at_training_call(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The training loss of the ``call``-th step is NaN."""
    cls = task_class("growing")
    original = cls.loss
    training_calls: list[int] = []

    def loss(self: Any, state: torch.Tensor, batch: Any) -> torch.Tensor:
        value = original(self, state, batch)
        if state.requires_grad:  # the training loss, not the pool's ranking
            training_calls.append(1)
            if len(training_calls) == call:
                return value * float("nan")
        return value

    monkeypatch.setattr(cls, "loss", loss)


def fit_reading_every(config: dict[str, Any], run_dir: Path, every: int) -> Trainer:
    """A trainer that reads its figures every ``every`` steps, as on an accelerator."""
    trainer = Trainer(config, run_dir)
    trainer.read_every = every
    trainer.fit(NullLogger(), threading.Event(), progress=False)
    return trainer


def test_figures_read_in_blocks_give_the_same_run(tmp_path: Path) -> None:
    config = small(
        "trainer.iterations=8",
        "trainer.log_every=4",
        "trainer.checkpoint_every=8",
        "trainer.image_every=8",
    )
    each = fit_reading_every(config, tmp_path / "each", 1)
    blocks = fit_reading_every(config, tmp_path / "blocks", 4)
    assert blocks.history == each.history and len(each.history) == 8
    assert losses(tmp_path / "blocks") == losses(tmp_path / "each")


def test_a_divergence_read_late_names_its_iteration_and_saves_nothing_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small(
        "trainer.iterations=10",
        "trainer.log_every=5",
        "trainer.checkpoint_every=5",
        "trainer.image_every=10",
        "model.engine=dense",
        "model.compile=false",
    )
    nan_at_training_call(monkeypatch, 3)
    reads: list[list[int]] = []
    original = Trainer.read

    def read(self: Trainer, results: list[StepResult]) -> dict[str, float]:
        reads.append([r.iteration for r in results])
        return original(self, results)

    monkeypatch.setattr(Trainer, "read", read)
    trainer = Trainer(config, tmp_path)
    trainer.read_every = 5
    trainer.save()
    with pytest.raises(DivergenceError, match="at iteration 3: the loss is nan"):
        trainer.fit(NullLogger(), threading.Event(), progress=False)
    assert reads == [[1, 2, 3, 4, 5]]  # one read for five steps
    assert len(trainer.history) == 2 and all(np.isfinite(trainer.history))  # steps 1 and 2
    assert load_checkpoint(tmp_path / "last.ckpt")["iteration"] == 0  # not the diverged one


def test_dead_cells_stop_the_run(tmp_path: Path) -> None:
    config = small("model.alive_threshold=5.0")
    with pytest.raises(DivergenceError, match="dead"):
        train(config, tmp_path)


@pytest.mark.parametrize(
    "options",
    [
        ["trainer.bf16=true"],
        ["trainer.bf16=true", "model.engine=dense", "model.compile=false"],  # CUDA's bf16 step
        ["trainer.grad.accumulate=2", "trainer.optimizer.name=adamw"],
        [
            "trainer.schedule.name=cosine",
            "trainer.grad.normalize=false",
            "trainer.grad.clip_norm=1.0",
        ],
        ["trainer.schedule.name=exponential", "trainer.schedule.gamma=0.5"],
        ["trainer.gradient_checkpointing=4"],
    ],
)
def test_trainer_options_train(tmp_path: Path, options: list[str]) -> None:
    config = small("task=growing", "trainer.iterations=3", *options)
    trainer = Trainer(config, tmp_path)
    before = [p.detach().clone() for p in trainer.params]
    lrs = []
    for _ in range(3):
        figures = trainer.read([trainer.train_step()])
        lrs.append(trainer.scheduler.get_last_lr()[0])
        assert np.isfinite(figures["loss"]) and figures["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))
    if "exponential" in " ".join(options):
        assert lrs == pytest.approx([2e-3 * 0.5, 2e-3 * 0.25, 2e-3 * 0.125])


def test_warmup_rises_linearly_then_the_schedule_runs_over_the_rest() -> None:
    from nca_cli.training.optim import build_scheduler
    from nca_cli.training.schema import ScheduleConfig

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup=4), 12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs[:5], [0.0, 0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))  # cosine over the other 8
    assert lrs[-1] < 0.05
    with pytest.raises(ConfigError, match=r"trainer.schedule.warmup"):
        parse_run_config(compose(["trainer.iterations=10", "trainer.schedule.warmup=11"]))


def test_snapshots_keep_the_checkpoints_of_their_iterations(tmp_path: Path) -> None:
    config = compose(["trainer=smoke", "logger=none", "trainer.snapshots=[1,3]"])
    train(config, tmp_path)
    for i in (1, 3):
        assert load_checkpoint(tmp_path / f"iter_{i:06d}.ckpt")["iteration"] == i
    assert not (tmp_path / "iter_000002.ckpt").exists()
    with pytest.raises(ConfigError, match=r"trainer.snapshots.*between 1 and"):
        parse_run_config(compose(["trainer=smoke", "trainer.snapshots=[5]"]))
