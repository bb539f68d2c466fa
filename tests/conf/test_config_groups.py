"""Each config group is about its own group.

Only ``conf/experiment/`` holds cross-group recipes (``# @package _global_``). A task names
the dataset, loss, model and perception it needs in its defaults list
(``override /dataset@_group_: mnist``) and the values it needs in other groups in small files
of those groups (``trainer/_task/mnist.yaml``, ``# @package trainer``), layered on whichever
option of that group is chosen; ``trainer=smoke`` does the same for its tiny grid
(``dataset/_trainer/smoke.yaml``). So ``task=kvasir model=cascade`` keeps kvasir's 32
channels, ``task=mnist trainer=smoke`` mnist's batch of 16, and the command line still wins.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import pytest
import yaml

from nca_cli.composition import compose, config_groups
from nca_cli.errors import ConfigError

ROOT = resources.files("nca_cli.conf")
# Groups whose files Hydra composes into the training config (conf/reproduce is read by
# `nca reproduce`, not composed; conf/hydra holds Hydra's own launcher presets).
NOT_COMPOSED = {"reproduce", "hydra", "__pycache__"}


def yaml_files(node: Traversable = ROOT, path: str = "") -> dict[str, Traversable]:
    """Every .yaml file under ``node``, by its path relative to conf/."""
    found = {}
    for child in node.iterdir():
        rel = f"{path}/{child.name}" if path else child.name
        if child.is_dir():
            found.update(yaml_files(child, rel))
        elif child.name.endswith(".yaml"):
            found[rel] = child
    return found


def group_files() -> dict[str, Traversable]:
    """The config group files of the training config (not config.yaml, sweep.yaml, ...)."""
    return {
        p: f for p, f in yaml_files().items() if "/" in p and p.split("/")[0] not in NOT_COMPOSED
    }


def package_header(text: str) -> str | None:
    """The ``# @package`` header of a config file, if any."""
    found = re.search(r"^#\s*@package\s+(\S+)", text, flags=re.MULTILINE)
    return found.group(1) if found else None


def options(group: str) -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in ROOT.joinpath(group).iterdir()
        if p.name.endswith(".yaml")
    )


def load(path: str) -> dict[str, Any]:
    return yaml.safe_load(ROOT.joinpath(path).read_text()) or {}


def defaults(path: str) -> list[tuple[str, str, str]]:
    """(kind, group, option) of each entry of a config's defaults list, configs it includes
    (``- edges2emoji``) followed: kind is ``override`` (a choice of another group's option)
    or ``layer`` (a file of a group's ``_task``/``_trainer`` folder); the package
    (``@_group_``) is left out."""
    entries: list[tuple[str, str, str]] = []
    folder = path.rsplit("/", 1)[0]
    for item in load(path).get("defaults", []):
        if isinstance(item, str):
            if item != "_self_":
                entries += defaults(f"{folder}/{item}.yaml")
            continue
        ((key, option),) = item.items()
        kind = "override" if key.startswith("override ") else "layer"
        group = key.removeprefix("override ").removeprefix("optional ").split("@")[0]
        entries.append((kind, group.lstrip("/"), str(option)))
    return entries


def chosen_by(group: str, option: str) -> list[str]:
    """The tasks whose defaults list chooses ``group=option`` (directly or by inclusion)."""
    return [t for t in options("task") if ("override", group, option) in defaults(f"task/{t}.yaml")]


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every leaf of a nested mapping."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def without_defaults(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "defaults"}


# (a) ----------------------------------------------------------------------------------


def test_only_experiments_reach_into_other_groups() -> None:
    files = group_files()
    assert "task/mnist.yaml" in files and "trainer/_task/mnist.yaml" in files
    for path, file in files.items():
        text = file.read_text()
        group = path.split("/")[0]
        header = package_header(text)
        if group == "experiment":
            assert header == "_global_", path  # cross-group recipes, by design
            continue
        assert header is None or header == group, f"{path}: @package {header}"
        assert "_global_" not in text, f"{path} names the global package"
    # conf/reproduce is read by `nca reproduce`, never composed, and carries no package either.
    for path, file in yaml_files().items():
        if path.split("/")[0] not in ("experiment",):
            assert package_header(file.read_text()) != "_global_", path


def test_layers_are_not_options_of_their_group() -> None:
    groups = config_groups()
    assert groups["trainer"] == ["default", "distill", "smoke"]
    for group in ("trainer", "model", "loss", "dataset"):
        assert not any(o.startswith("_") for o in groups[group]), group
    with pytest.raises(ConfigError, match="expected one of default, distill, smoke"):
        compose(["trainer=_task"])


def test_every_layer_file_is_named_by_the_config_it_belongs_to() -> None:
    layers = [p for p in group_files() if re.fullmatch(r"[^/]+/_[^/]+/[^/]+\.yaml", p)]
    assert layers, "no layer files found"
    for path in layers:
        group, owner, name = path.removesuffix(".yaml").split("/")
        owner_file = f"{owner.lstrip('_')}/{name}.yaml"
        assert ("layer", f"{group}/{owner}", name) in defaults(owner_file), path


def test_every_dataset_and_loss_preset_has_a_task_that_chooses_it() -> None:
    # The entries test_train's task_choosing pairs a dataset or loss preset with.
    for group, default in (("dataset", "emoji"), ("loss", "mse")):
        for option in options(group):
            assert option == default or chosen_by(group, option), f"{group}={option}"
    assert chosen_by("dataset", "kvasir") == ["kvasir"]
    assert chosen_by("loss", "gan") == ["ganca"]
    assert chosen_by("model", "selfclassifying") == ["mnist"]


# (b) ----------------------------------------------------------------------------------

# The values that made up each task's preset when its file reached into other groups.
TASK_VALUES: dict[str, dict[str, Any]] = {
    "mnist": {
        "task.name": "mnist",
        "task.pool.size": 160,
        "dataset.size": 28,
        "dataset.padding": 0,
        "loss.name": "mse",
        "loss.reduction": "mean",
        "loss.overflow": 0.0,
        "model.channels": 20,
        "model.hidden": [80],
        "model.alive_pool": False,
        "model.update_noise": 0.02,
        "perception.kind": "conv",
        "perception.features": 80,
        "trainer.batch_size": 16,
        "trainer.steps": {"min": 20, "max": 20},
        "trainer.schedule.name": "piecewise",
        "trainer.schedule.milestones": [30000, 70000],
        "trainer.optimizer.lr": 1.0e-3,
        "trainer.grad.normalize": False,
        "trainer.iterations": 600,
    },
    "kvasir": {
        "task.name": "kvasir",
        "task.pool.size": 0,
        "dataset.size": 64,
        "loss.name": "dice_bce",
        "model.channels": 32,
        "model.hidden": [128],
        "perception.kind": "sobel",
        "trainer.batch_size": 8,
        "trainer.steps": {"min": 48, "max": 64},
    },
    "medmnist": {
        "task.name": "medmnist",
        "dataset.name": "pneumoniamnist",
        "loss.name": "cross_entropy",
        "model.channels": 24,
        "model.hidden": [64],
        "trainer.batch_size": 16,
        "trainer.steps": {"min": 24, "max": 32},
    },
    "shapes": {
        "task.name": "shapes",
        "dataset.samples": 400,
        "loss.name": "dice_bce",
        "model.channels": 16,
        "model.hidden": [64],
        "trainer.batch_size": 8,
        "trainer.steps": {"min": 24, "max": 32},
    },
    "texture": {
        "task.name": "texture",
        "task.pool.size": 1024,
        "dataset.target": "dtd/bubbly_0101.jpg",
        "loss.name": "sot",
        "loss.overflow": 1.0,
        "model.channels": 12,
        "model.hidden": [96],
        "trainer.batch_size": 8,
        "trainer.steps": {"min": 32, "max": 54},
    },
    "edges2emoji": {
        "task.name": "edges2emoji",
        "task.pool.size": 256,
        "dataset.ood_gaps": 0.15,
        "loss.name": "mse",
        "model.channels": 16,
        "trainer.batch_size": 16,
        "trainer.steps": {"min": 50, "max": 60},
    },
    "ganca": {
        "task.name": "edges2emoji",
        "loss.name": "gan",
        "loss.d_steps": 1,
        "trainer.batch_size": 16,
        "trainer.steps": {"min": 50, "max": 60},
    },
    "emoji_conditional": {
        "task.name": "emoji_conditional",
        "task.pool.mutate": 1,
        "dataset.size": 40,
        "dataset.targets": ["lizard", "butterfly", "mushroom", "smiley", "fish"],
        "model.channels": 24,
        "trainer.batch_size": 8,
        "trainer.steps": {"min": 48, "max": 64},
    },
    "growing": {"task.pool.size": 0, "model.channels": 16, "trainer.batch_size": 8},
    "persistent": {"task.pool.size": 1024, "dataset.target": "lizard", "loss.name": "mse"},
    "regenerating": {"task.pool.size": 1024, "task.pool.damage.count": 3},
}


def test_every_task_has_its_values_listed() -> None:
    assert sorted(TASK_VALUES) == options("task")


@pytest.mark.parametrize("task", sorted(TASK_VALUES))
def test_a_task_composes_to_its_preset_values(task: str) -> None:
    config = compose([f"task={task}"])
    assert {k: get(config, k) for k in TASK_VALUES[task]} == TASK_VALUES[task]


def test_smoke_trainer_brings_its_tiny_grid() -> None:
    config = compose(["trainer=smoke"])
    assert config["dataset"]["size"] == 12 and config["trainer"]["iterations"] == 4
    assert compose(["task=mnist", "trainer=smoke"])["dataset"]["size"] == 12


LAYERED = [t for t in options("task") if any(d[0] == "layer" for d in defaults(f"task/{t}.yaml"))]


@pytest.mark.parametrize("task", LAYERED)
def test_a_tasks_values_stay_whatever_option_of_the_group_is_chosen(task: str) -> None:
    """The values a task layers on trainer/model/loss survive any option of that group, as
    they did when the task file set them last (task=kvasir model=cascade: 32 channels)."""
    for _, layer, name in [d for d in defaults(f"task/{task}.yaml") if d[0] == "layer"]:
        group = layer.split("/")[0]
        values = leaves(without_defaults(load(f"{layer}/{name}.yaml")))
        for option in options(group):
            config = compose([f"task={task}", f"{group}={option}"])
            got = {k: get(config[group], k) for k in values}
            assert got == values, f"task={task} {group}={option}"


@pytest.mark.parametrize("task", [t for t in options("task") if t in TASK_VALUES])
def test_a_tasks_choices_are_the_chosen_options(task: str) -> None:
    """Each ``override /group: option`` of a task gives that option's values (with the
    task's own layer for the group on top)."""
    config = compose([f"task={task}"])
    entries = defaults(f"task/{task}.yaml")
    for _, group, option in [d for d in entries if d[0] == "override"]:
        expected = leaves(compose([f"{group}={option}"])[group])
        for _, layer, name in entries:
            if layer == f"{group}/_task":
                expected.update(leaves(without_defaults(load(f"{layer}/{name}.yaml"))))
        assert leaves(config[group]) == expected, f"task={task}: {group}={option}"


# (c) ----------------------------------------------------------------------------------

OVERRIDES_WIN: list[tuple[list[str], str, Any]] = [
    (["task=mnist", "trainer.batch_size=4"], "trainer.batch_size", 4),
    (["task=mnist", "trainer=smoke", "trainer.batch_size=4"], "trainer.batch_size", 4),
    (["task=mnist", "trainer.steps.max=30"], "trainer.steps", {"min": 20, "max": 30}),
    (["task=mnist", "loss.reduction=half_sum"], "loss.reduction", "half_sum"),
    (["task=mnist", "lr=0.01"], "trainer.optimizer.lr", 0.01),
    (["task=mnist", "pool_size=7"], "task.pool.size", 7),
    (["task=kvasir", "model.channels=40"], "model.channels", 40),
    (["task=kvasir", "channels=40"], "model.channels", 40),
    (["task=kvasir", "model=cascade", "channels=40"], "model.channels", 40),
    (["task=texture", "hidden=64"], "model.hidden", 64),
    (["task=shapes", "fire_rate=0.3"], "model.fire_rate", 0.3),
    (["task=emoji_conditional", "trainer.batch_size=3"], "trainer.batch_size", 3),
    (["task=edges2emoji", "trainer.steps.min=40"], "trainer.steps", {"min": 40, "max": 60}),
    (["task=medmnist", "dataset.name=bloodmnist"], "dataset.name", "bloodmnist"),
    (["trainer=smoke", "dataset.size=20"], "dataset.size", 20),
    (["task=mnist", "trainer=smoke", "dataset.size=20"], "dataset.size", 20),
    # A group chosen on the command line wins over the task's choice of it.
    (
        ["task=mnist", "loss=cross_entropy"],
        "loss",
        {"name": "cross_entropy", "reduction": "mean", "overflow": 0.0},
    ),
    (["task=mnist", "perception=sobel"], "perception.kind", "sobel"),
    (["task=kvasir", "dataset=shapes"], "dataset.samples", 400),
    (["task=edges2emoji", "loss=gan"], "loss.name", "gan"),
    (["task=ganca", "loss=mse"], "loss", {"name": "mse"}),
    # model=default replaces the task's model=selfclassifying (its perception stays).
    (["task=mnist", "model=default"], "model.hidden", [128]),
    (["task=mnist", "model=default"], "perception.features", 80),
    # An experiment (after the task) wins over the task's values, the command line over both.
    (["experiment=mnist_review"], "trainer.batch_size", 18),
    (["experiment=mnist_review"], "loss.reduction", "all_cells"),
    (["experiment=mnist_review", "trainer.batch_size=4"], "trainer.batch_size", 4),
    (["experiment=mnist_notebook"], "loss.reduction", "half_sum"),
    (["experiment=distill", "trainer=smoke"], "dataset.size", 40),
    (["experiment=mnist_review", "trainer=smoke"], "trainer.batch_size", 18),
]


@pytest.mark.parametrize(("overrides", "key", "value"), OVERRIDES_WIN, ids=lambda x: str(x))
def test_the_command_line_wins_over_a_tasks_values(
    overrides: list[str], key: str, value: Any
) -> None:
    assert get(compose(overrides), key) == value


def test_layers_land_in_their_group_not_under_the_task() -> None:
    # Their `# @package <group>` header places them; without it they would be task.trainer._task.
    for task in LAYERED:
        config = compose([f"task={task}"])
        assert set(config) == {
            "seed",
            "device",
            "threads",
            "resume",
            "init",
            "task",
            "model",
            "perception",
            "dataset",
            "loss",
            "trainer",
            "logger",
        }
        assert not {"model", "trainer", "loss", "dataset", "_task"} & set(config["task"]), task
        for group in ("model", "trainer", "loss"):
            assert "_task" not in config[group], task
