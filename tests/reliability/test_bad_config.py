"""Bad configuration fails before any work with one clear message naming the key, the value
and what is allowed; random override sets (hypothesis) find no other failure mode."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import TINY, assert_clean_error, run_main

from nca_cli.commands import train
from nca_cli.composition import compose, config_groups
from nca_cli.config import ConfigError
from nca_cli.datasets.storage import DataError
from nca_cli.engine.cascade import build_model
from nca_cli.shortcuts import label
from nca_cli.tasks import task_class
from nca_cli.training.schema import parse_run_config


def build(overrides: list[str]) -> None:
    """Everything ``nca train`` does before its first iteration, except allocating the pool."""
    config = compose(overrides)
    run = parse_run_config(config)
    task = task_class(str(run.task.get("name", "")))(run)
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
    state = task.fresh(1, torch.Generator().manual_seed(0))["state"]
    with torch.no_grad():
        out = nca.step(state) if hasattr(nca, "step") else nca.rollout(state, 1)[0]
    assert out.shape == state.shape


@pytest.mark.parametrize(
    ("override", "key", "value", "allowed"),
    [
        ("fire_rate=1.5", "model.fire_rate", "1.5", "(0, 1]"),
        ("fire_rate=0", "model.fire_rate", "0", "(0, 1]"),
        ("channels=3", "model.channels", "3", "channels"),
        ("trainer.steps.min=50", "trainer.steps.max", "12", ">= trainer.steps.min (50)"),
        ("perception.kind=nope", "perception.kind", "nope", "sobel"),
        ("perception.kind=[]", "perception.kind", "[]", "sobel"),  # found by hypothesis
        ("task.name=nope", "task.name", "nope", "growing"),
        ("lr=0", "trainer.optimizer.lr", "0", "positive"),
        ("lr=-1e-3", "trainer.optimizer.lr", "-0.001", "positive"),
        ("trainer.batch_size=0", "trainer.batch_size", "0", "positive"),
        ("trainer.regen_check.max_share=1", "trainer.regen_check.max_share", "1", "[0, 1)"),
        ("trainer.iterations=abc", "trainer.iterations", "abc", "an integer"),
        ("trainer.steps=3", "trainer.steps", "3", "min, max"),
        ("model.hidden=abc", "model.hidden", "abc", "a list of integers"),
        ("+trainer.foo=1", "trainer.foo", "", "allowed keys here"),
        ("dataset=3", "dataset", "3", "emoji"),
        ("fire_rate=${nope}", "model.fire_rate", "nope", "not found"),
    ],
)
def test_bad_value_is_one_clear_error(override: str, key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build([*TINY, override])
    message = str(caught.value)
    assert "\n" not in message
    for part in (label(key), value, allowed):
        assert part in message, (part, message)


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    return run_main(train.main, argv, capsys)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("channels=2", "'channels' (model.channels): 2"),
        ("trainer.foo=1", "Could not override 'trainer.foo'"),
        ("trainer.batch_size=zero", "'trainer.batch_size': 'zero'"),
        ("perception=nope", "config group 'perception': 'nope'; expected one of"),
        ("trainer.steps={min: 9, max: 3}", "'trainer.steps.max': 3"),
        ("dataset=3", "config group 'dataset': 3"),
        ("fire_rate=${nope}", "'fire_rate'"),
    ],
)
def test_cli_fails_before_any_work(
    override: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = cli([*TINY, override], capsys)
    assert code != 0
    assert_clean_error(output, needle)
    outputs = Path(os.environ["NCA_OUTPUT_DIR"])
    assert not list(outputs.rglob("last.ckpt")) and not list(outputs.rglob("metrics.jsonl"))


# -- property: random override sets ----------------------------------------------------
def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


TREE: dict[str, Any] = {}  # every key of every task's config, with a default value
for _task in config_groups()["task"]:
    TREE.update(dict(leaves(compose([f"task={_task}"]))))
GROUPS = config_groups()
JUNK_KEYS = ["foo", "trainer.foo", "model.hiddn", "task.pool.foo", "dataset.foo", "seed.x"]


def literal(value: Any) -> str:
    """``value`` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 48),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text("abcxyz_-./ ,=:$", max_size=6),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["min", "max", "a"]), scalars, max_size=2),
)


@st.composite
def override(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "group", "junk", "raw"]))
    if kind == "group":
        group = draw(st.sampled_from(sorted(GROUPS)))
        choice = draw(st.one_of(st.sampled_from(GROUPS[group]), st.just("nope")))
        return f"{group}={choice}"
    if kind == "raw":  # text that is not a literal at all
        return draw(st.sampled_from(["fire_rate=${nope}", "lr=", "=3", "seed", "x=[1,", "'a'=1"]))
    key = draw(st.sampled_from(sorted(TREE) if kind == "leaf" else JUNK_KEYS))
    prefix = draw(st.sampled_from(["", "", "", "+", "++", "~"]))
    if prefix == "~":
        return f"~{key}"
    nearby = TREE.get(key)
    value = draw(st.one_of(values, st.just(nearby)) if kind == "leaf" else values)
    return f"{prefix}{key}={literal(value)}"


@pytest.fixture
def offline_data(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small real data sets (Kvasir-SEG, MedMNIST) and no network: MNIST is missing,
    and fetching it fails at once, as it would on a machine without one."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("Kvasir-SEG", "medmnist"):
        if (shared_data / name).exists():
            (data / name).symlink_to(shared_data / name)
    monkeypatch.setenv("NCA_DATA_DIR", str(data))

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def check_overrides(overrides: list[str]) -> None:
    """Building with ``overrides`` succeeds or fails with a clean, key-naming error."""
    try:
        build(["trainer=smoke", *overrides])
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), message
        assert "'" in message, f"names no key: {message}"
    except DataError as err:
        assert str(err)
    except HydraException as err:  # Hydra's own errors about an override: it names it
        message = str(err)
        keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
        assert any(k and k in message for k in keys) or "override" in message.lower(), message


RANDOM = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(RANDOM, max_examples=150)
@given(st.lists(override(), min_size=1, max_size=4))
def test_random_overrides_fail_only_cleanly(offline_data: None, overrides: list[str]) -> None:
    check_overrides(overrides)


@pytest.mark.slow
@settings(RANDOM, max_examples=2000)
@given(st.lists(override(), min_size=1, max_size=6))
def test_many_random_overrides_fail_only_cleanly(offline_data: None, overrides: list[str]) -> None:
    check_overrides(overrides)
