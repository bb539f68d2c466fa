"""check_config: what every command that starts training refuses before any work."""

from __future__ import annotations

import pytest

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.training.checks import check_config, points_to_check, refuse_unread


@pytest.mark.parametrize(
    ("overrides", "unread", "reason"),
    [
        (["trainer.schedule.name=constant"], "trainer.schedule.milestones=[5]", "'constant'"),
        (["trainer.schedule.name=cosine"], "trainer.schedule.gamma=0.5", "reads only min_lr"),
        (["trainer.regen_check.enabled=false"], "trainer.regen_check.every=5", "is false"),
        (
            ["task=regenerating", "task.pool.damage.kind=rect"],
            "task.pool.damage.radius=[0.1,0.2]",
            "damage kind 'rect' reads only size",
        ),
        (["task=persistent"], "task.pool.replace=2", None),  # read: the control
        (["task=ganca"], "loss.gp_weight=1.0", "loss.mode is 'bce'"),
        (["task=ganca", "loss.mode=wgan_gp"], "loss.real_label=0.8", "no BCE targets"),
        (["logger=none"], "logger.tags=[a]", "logger=none"),
    ],
)
def test_an_override_of_a_field_the_run_leaves_unread_is_refused(
    overrides: list[str], unread: str, reason: str | None
) -> None:
    config = compose([*overrides, unread])
    if reason is None:
        check_config(config, [unread])
        return
    with pytest.raises(ConfigError, match="changes nothing") as caught:
        check_config(config, [unread])
    assert reason in str(caught.value) and unread.split("=")[0] in str(caught.value)
    check_config(config, overrides)  # the same config, without that override: fine


def test_a_shortcut_is_named_as_typed_in_the_refusal() -> None:
    with pytest.raises(ConfigError, match=r"'lr=0\.1' \(trainer\.optimizer\.lr\)"):
        refuse_unread(["trainer.optimizer.lr=0.1"], {"trainer": "not trained"})
    check_config(compose(["lr=0.1"]), ["trainer.optimizer.lr=0.1"])  # training reads it


def test_points_to_check_are_every_combination_or_one_value_at_a_time() -> None:
    assert points_to_check([[1, 2], ["a", "b"]]) == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    wide = [list(range(5))] * 3  # 125 combinations: each value with the others at their first
    points = points_to_check(wide)
    assert len(points) == 15 and (4, 0, 0) in points and (0, 0, 4) in points
