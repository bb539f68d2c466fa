"""``nca train``: compose the config with Hydra and run the training loop."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nca_cli.config import ConfigError, apply_overrides

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
    wanted = [
        item
        for item in overrides
        if not item.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))
    ]
    config = apply_overrides(checkpoint["config"], wanted, f"the run {run_dir}")
    config["resume"] = str(run_dir)
    return config, checkpoint


def finished_metrics(run_dir: Path) -> dict[str, float] | None:
    """The final metrics of a run folder whose training completed, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, int | float)}


@hydra.main(config_path="pkg://nca_cli.conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> dict[str, float] | None:
    from nca_cli.datasets.storage import DataError
    from nca_cli.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
    from nca_cli.training.trainer import DivergenceError, Interrupted, train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.get("resume"):
            config, checkpoint = resume_config(cfg, list(HydraConfig.get().overrides.task))
        else:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(resolved, dict)
            config, checkpoint = resolved, None
            finished = finished_metrics(run_dir)
            if finished is not None:  # a re-run multirun job (k-fold, sweep) that finished
                log.info("%s already finished; skipping", run_dir)
                return finished
            if (run_dir / CHECKPOINT_NAME).is_file():  # ... or that was interrupted
                checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
                log.info("continuing %s from iteration %d", run_dir, checkpoint["iteration"])
        metrics = train(config, run_dir, checkpoint)
    except (ConfigError, CheckpointError, DataError) as err:
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
