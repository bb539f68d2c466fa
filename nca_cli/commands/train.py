"""``nca train``: compose the config with Hydra and run the training loop."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nca_cli.config import ConfigError

log = logging.getLogger("nca.train")


def apply_resume(argv: list[str]) -> list[str]:
    """With ``resume=<run dir>``, write into that run folder instead of a new one."""
    for arg in argv:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            return [*argv, f"hydra.run.dir={arg.split('=', 1)[1]}"]
    return argv


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[dict[str, Any], dict]:
    """The saved config of the run to resume, with ``key=value`` overrides applied."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

    run_dir = Path(str(cfg.resume))
    if not run_dir.is_dir():
        raise ConfigError(f"invalid value for 'resume': {str(run_dir)!r} is not a run folder")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    saved = OmegaConf.create(checkpoint["config"])
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in ("resume", "hydra.run.dir") or key.startswith("hydra."):
            continue
        if "." not in key and isinstance(saved.get(key), DictConfig):
            raise ConfigError(
                f"cannot change config group '{key}' when resuming {run_dir}; override "
                "single keys (e.g. trainer.iterations=4000) or start a new run"
            )
        if OmegaConf.select(saved, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key '{key}' (resuming {run_dir})")
        OmegaConf.update(saved, key, OmegaConf.create({"v": value})["v"] if value else None)
    config = OmegaConf.to_container(saved, resolve=True)
    assert isinstance(config, dict)
    config["resume"] = str(run_dir)
    return config, checkpoint


@hydra.main(config_path="pkg://nca_cli.conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> dict[str, float] | None:
    from nca_cli.training.checkpoint import CheckpointError
    from nca_cli.training.trainer import DivergenceError, Interrupted, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.get("resume"):
            config, checkpoint = resume_config(cfg, list(HydraConfig.get().overrides.task))
        else:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(resolved, dict)
            config, checkpoint = resolved, None
        metrics = train(config, run_dir, checkpoint)
    except (ConfigError, CheckpointError) as err:
        print(f"nca train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        print(f"nca train: {err}\nThe last good checkpoint is in {run_dir}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(f"nca train: {err}", file=sys.stderr)
        sys.exit(130)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    log.info("done: %s", summary)
    print(f"run folder: {run_dir}\nfinal: {summary}")
    return metrics


def main(argv: list[str]) -> None:
    sys.argv = ["nca train", *apply_resume(argv)]
    app()
