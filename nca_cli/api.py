"""The library that the commands wrap: plain functions a notebook or script calls with a
composed config (or, where Hydra launches the runs, with the command's overrides).

    from nca_cli import api
    config = api.compose(["task=growing", "trainer.iterations=200", "logger=none"])
    run_folder = Path("outputs/train/growing")
    metrics = api.train(config, run_folder)        # resumes if interrupted
    figures = api.evaluate(run_folder)             # the regeneration protocol
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nca_cli.benchmark.timing import BenchOptions
    from nca_cli.crossval.kfold import KFoldResult
    from nca_cli.measures.protocol import ProtocolConfig
    from nca_cli.reproduction.reproduce import Outcome


EXPORT_FORMATS = ("onnx", "c", "web")


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The training config that ``nca train <overrides>`` runs (shortcuts such as
    ``fire_rate=`` allowed), checked: an override that the run would not read is an error."""
    from nca_cli.composition import compose as compose_config
    from nca_cli.shortcuts import expand
    from nca_cli.training.checks import check_config

    lines = expand(list(overrides))
    config = compose_config(lines)
    check_config(config, lines)
    return config


def train(
    config: dict[str, Any], run_dir: Path | None = None, stop: threading.Event | None = None
) -> dict[str, float]:
    """Train ``config`` (from :func:`compose`) into ``run_dir``, by default a new folder
    under the output root; a finished folder is not trained again and an interrupted one
    continues from its ``last.ckpt``; a failed one keeps its reason in ``error.txt``
    (``RunFailed`` is raised). Returns its metrics.json (the final metrics, the
    iteration and the training seconds); setting ``stop`` ends the run at the end of its
    step with its checkpoint written."""
    from nca_cli.paths import output_root, timestamp
    from nca_cli.training.checks import check_config
    from nca_cli.training.run_folder import (
        finished_metrics,
        logging_to,
        recording_failure,
        train_in_folder,
    )

    check_config(config)
    if run_dir is None:
        run_dir = output_root() / "train" / timestamp()
    with logging_to(run_dir), recording_failure(run_dir):
        metrics = train_in_folder(config, run_dir, stop=stop)
    return finished_metrics(run_dir) or metrics


def evaluate(
    run: Path,
    protocol: ProtocolConfig | None = None,
    overrides: Sequence[str] = (),
    wandb: bool = True,
) -> dict[str, Any]:
    """Run the regeneration protocol (defaults: the NCA review's, circle damage) on a run
    folder or a checkpoint file; writes ``<run>/eval/<timestamp>/`` and returns eval.json's
    figures (its ``out`` key names the folder)."""
    from nca_cli.evaluation.evaluate import evaluate as evaluate_protocol
    from nca_cli.measures.protocol import ProtocolConfig

    protocol = protocol or ProtocolConfig()
    out, summary = evaluate_protocol(_checkpoint(run), protocol, list(overrides), wandb=wandb)
    return {**summary, "out": str(out)}


def evaluate_sets(
    runs: Sequence[Path],
    sets: Sequence[str] = (),
    steps: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    lpips_net: str = "alex",
    show: int = 4,
    wandb: bool = True,
) -> dict[str, Any]:
    """Grow every sample of the task's sets (all of them when ``sets`` is empty) with each
    run (a run folder or a checkpoint file); writes sets.json and grid.png (``show``
    samples a set) into the first run's ``eval/<timestamp>/`` and returns sets.json's
    figures (its ``out`` key names the folder)."""
    from nca_cli.evaluation.runs import load_run
    from nca_cli.evaluation.sets import evaluate_sets as grow_sets

    loaded = [load_run(_checkpoint(run), list(overrides)) for run in runs]
    out, result = grow_sets(loaded, list(sets), steps, seed, lpips_net, show, wandb)
    return {**result, "out": str(out)}


def export(
    run: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    steps: int | None = None,
    quantization: str = "float32",
) -> Any:
    """Export a run (a run folder or a checkpoint file) in format ``fmt`` (``onnx`` or
    ``c``) to ``out`` (default ``<run folder>/export/<fmt>``), checked against the PyTorch
    step over ``steps`` steps (default 32 for ONNX's rollout graph, 64 for C); returns what
    export.json records."""
    from nca_cli.evaluation.runs import load_run
    from nca_cli.export import ExportError

    if fmt not in EXPORT_FORMATS:
        formats = ", ".join(EXPORT_FORMATS)
        raise ExportError(f"unknown export format {fmt!r}; expected one of {formats}")
    if quantization != "float32" and fmt != "c":
        raise ExportError(f"--quantize {quantization} applies to --format c only, not {fmt}")
    from nca_cli.zoo import results_folder

    checkpoint = _checkpoint(run)
    loaded = load_run(checkpoint, ["device=cpu"])
    folder = out or results_folder(checkpoint) / "export" / fmt
    if fmt == "web":
        from nca_cli.export.web_page import export_web

        return export_web(loaded, folder, title=str(run))
    if fmt == "c":
        from nca_cli.export.c_source import export_c

        return export_c(loaded, folder, steps or 64, quantization)
    from nca_cli.export.onnx_graph import export_onnx

    return export_onnx(loaded, folder, steps or 32)


def view(
    run: Path,
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Export a run to the web page in a temporary folder and serve it on 127.0.0.1 (a free
    port unless ``port``) until interrupted; ``announce`` receives the address."""
    import tempfile

    from nca_cli.export.serve import serve_folder

    with tempfile.TemporaryDirectory(prefix="nca-view-") as tmp:
        export(run, "web", Path(tmp) / "web")
        serve_folder(Path(tmp) / "web", port, open_browser, announce)


def zoo(names: Sequence[str] = (), check: bool = False) -> list[dict[str, Any]]:
    """The zoo's models (all, or ``names``) as rows; with ``check``, each with its golden
    evaluation run now (``figure``, ``passed``)."""
    from nca_cli.zoo import catalogue, zoo_checkpoint

    models = catalogue()
    for name in names:
        zoo_checkpoint(f"zoo:{name}")  # an unknown name is an error that lists the zoo
    rows = []
    for name, model in models.items():
        if names and name not in names:
            continue
        row: dict[str, Any] = {"model": model, "bytes": model.path.stat().st_size}
        if check:
            from nca_cli.evaluation.zoo import golden_figure

            figure = golden_figure(model)
            row["figure"] = figure
            row["passed"] = abs(figure - model.golden.value) <= model.golden.tolerance
        rows.append(row)
    return rows


def _checkpoint(run: Path) -> Path:
    """The checkpoint of a run folder, or ``run`` itself when it is a checkpoint file
    (imported here: ``nca --help`` stays free of torch)."""
    from nca_cli.evaluation.runs import find_checkpoint

    return find_checkpoint(run)


def kfold(
    overrides: Sequence[str],
    k: int | None = None,
    folder: Path | None = None,
    splits: Path | None = None,
    resume_only: bool = False,
    say: Callable[[str], None] = print,
) -> KFoldResult:
    """K-fold cross-validation of the training config that ``overrides`` compose: one run
    per fold in ``folder`` (a new one by default; an existing k-fold folder resumes), on the
    Hydra launcher the overrides choose. See ``nca_cli.crossval.kfold.run_kfold``."""
    from nca_cli.crossval.kfold import run_kfold
    from nca_cli.shortcuts import expand

    return run_kfold(expand(list(overrides)), k, folder, splits, resume_only, say)


def sweep(overrides: Sequence[str]) -> None:
    """A grid or Optuna search (``nca sweep``'s arguments: ``search=``, ``n_trials=``,
    ``cv.k=``, ...); its study, trials' run folders and ``trials.csv`` go to the sweep folder
    and the same call resumes it."""
    from nca_cli.sweeping.run import run_sweep

    run_sweep(list(overrides))


def reproduce(
    name: str,
    folder: Path | None = None,
    budget: float = 1.0,
    overrides: Sequence[str] = (),
    runs: Sequence[str] | None = None,
    jobs: int = 1,
    samples: int | None = None,
    original: bool = True,
    original_python: str | None = None,
) -> Outcome:
    """Train, evaluate and tabulate the reproduction ``name`` (``conf/reproduce/<name>.yaml``)
    in ``folder`` (a new one by default; an existing one resumes), with the recipes'
    iterations scaled by ``budget``; ``runs`` picks some of its runs. Returns the folder,
    its table.md and the runs that did not finish."""
    from nca_cli.reproduction.reproduce import new_folder
    from nca_cli.reproduction.reproduce import reproduce as run_reproduction
    from nca_cli.reproduction.spec import load
    from nca_cli.shortcuts import expand

    return run_reproduction(
        load(name),
        folder or new_folder(name),
        budget=budget,
        extra=expand(list(overrides)),
        jobs=jobs,
        samples=samples,
        original=original,
        original_python=original_python,
        only=list(runs) if runs else None,
    )


def bench(
    cases: Sequence[str] | None = None,
    case_file: Path | None = None,
    options: BenchOptions | None = None,
) -> list[dict[str, Any]]:
    """Time the named cases (all shipped ones by default; ``case_file`` adds a YAML file of
    cases in ``conf/bench.yaml``'s format), each in its own process; one row per case."""
    from nca_cli.benchmark.timing import BenchOptions, run_bench, select_cases

    chosen = select_cases(list(cases) if cases else None, case_file)
    return run_bench(chosen, options or BenchOptions())
