"""``nca_cli.api``: what a notebook calls, with a composed config and no command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nca_cli import api
from nca_cli.config import ConfigError
from nca_cli.measures.protocol import ProtocolConfig
from nca_cli.measures.steps import ProtocolSteps

SMOKE = ["trainer=smoke", "logger=none"]


def test_compose_refuses_an_override_that_the_run_does_not_read() -> None:
    config = api.compose(["task=growing", "fire_rate=0.3", *SMOKE])  # shortcuts work
    assert config["model"]["fire_rate"] == 0.3
    with pytest.raises(ConfigError, match="alive_threshold"):
        api.compose(["model.alive_mask=false", "model.alive_threshold=0.2", *SMOKE])


def test_a_run_trains_is_skipped_when_finished_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NCA_OUTPUT_DIR", str(tmp_path / "outputs"))
    config = api.compose(["task=growing", *SMOKE])
    run = tmp_path / "run"
    metrics = api.train(config, run)
    assert metrics["iteration"] == config["trainer"]["iterations"] and "mse" in metrics
    for name in ("metrics.json", "last.ckpt", "config.yaml", "train.log"):
        assert (run / name).is_file(), name
    assert "task growing, 8336 parameters" in (run / "train.log").read_text()  # as under Hydra
    mtime = (run / "last.ckpt").stat().st_mtime_ns
    assert api.train(config, run) == pytest.approx(metrics)  # finished: not trained again
    assert (run / "last.ckpt").stat().st_mtime_ns == mtime

    steps = ProtocolSteps(stage1=[4, 6], stage2=9, perturb_at=10, stage3=20)
    protocol = ProtocolConfig(steps=steps, samples=2, curve_every=0, detail=False)
    figures = api.evaluate(run, protocol, wandb=False)
    out = Path(figures["out"])
    assert out.parent == run / "eval" and (out / "eval.json").is_file()
    assert figures["damage"]["kind"] == "circle"

    again = api.train(config)  # a new folder under the output root
    assert again.keys() == metrics.keys()
    assert len(list((tmp_path / "outputs" / "train").iterdir())) == 1


def test_kfold_returns_each_folds_state_and_the_summary(tmp_path: Path) -> None:
    overrides = ["task=shapes", "dataset.samples=30", *SMOKE]
    result = api.kfold(overrides, k=2, folder=tmp_path / "cv", say=lambda _: None)
    assert result.states == ["fold_0: finished", "fold_1: finished"] and result.failed == 0
    assert result.summary is not None and result.summary["folds"] == [0, 1]
    assert (tmp_path / "cv" / "summary.json").is_file()
