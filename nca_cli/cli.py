"""The ``nca`` console script: a thin dispatcher to subcommands, imported lazily so that
``nca --help`` and shell completion answer at once."""

from __future__ import annotations

import importlib
import os
import sys

import nca_cli

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "nca_cli.commands.train",
        "train an NCA (Hydra overrides: task=, perception=, fire_rate=, ...)",
    ),
    "sweep": (
        "nca_cli.commands.sweep",
        "grid and Optuna searches of training runs that resume and run in parallel",
    ),
    "eval": (
        "nca_cli.commands.eval",
        "regeneration after damage or mutation: LPIPS per stage, Recovery%, uncertainty",
    ),
    "kfold": (
        "nca_cli.commands.kfold",
        "k-fold cross-validation of any training config: mean ± std over folds",
    ),
    "reproduce": (
        "nca_cli.commands.reproduce",
        "published tables as commands: train, evaluate, and set ours beside the paper",
    ),
    "export": (
        "nca_cli.commands.export",
        "a trained NCA as ONNX, C99 or a WebGL page, checked against the PyTorch step",
    ),
    "view": (
        "nca_cli.commands.view",
        "a trained NCA live in the browser: erase cells with the mouse, watch it regrow",
    ),
    "zoo": (
        "nca_cli.commands.zoo",
        "trained models shipped with nca, their figures and golden checks (zoo:NAME)",
    ),
    "bench": (
        "nca_cli.commands.bench",
        "time training and rollouts of named models; compare with the matmul limit",
    ),
}

USAGE = """usage: nca <command> [args...]

nca runs Neural Cellular Automata experiments: it composes a task, a model, a perception
and a trainer from Hydra configs, trains with a sample pool and damage, and saves every
run (config, checkpoints, images, metrics, W&B files) under outputs/.

commands:
{commands}

options:
  -h, --help     show this message and exit
  --version      show the version and exit

`nca <command> --help` explains a command. Shell completion: eval "$(nca train -sc install=bash)"
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def _complete(argv: list[str]) -> int | None:
    """Route Hydra's shell-completion query to the subcommand on the command line.

    Hydra's completion script calls ``nca -sc query=bash`` with the whole line in
    COMP_LINE; the subcommand's app must see the line without the subcommand word.
    """
    if len(argv) < 2 or argv[0] != "-sc" or not argv[1].startswith("query="):
        return None
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) >= 3 and words[1] in COMMANDS:
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
        point = int(os.environ.get("COMP_POINT", len(line)))
        os.environ["COMP_POINT"] = str(max(point - len(words[1]) - 1, 0))
        module = importlib.import_module(COMMANDS[words[1]][0])
        module.main(argv)
        return 0
    prefix = words[1] if len(words) >= 2 else ""
    print(" ".join(name for name in COMMANDS if name.startswith(prefix)))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    completed = _complete(args)
    if completed is not None:
        sys.exit(completed)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), end="")
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"nca {nca_cli.__version__}")
        sys.exit(0)
    name = args[0]
    if name not in COMMANDS:
        print(f"nca: unknown command {name!r}\n\n{_usage()}", file=sys.stderr, end="")
        sys.exit(2)
    try:
        module = importlib.import_module(COMMANDS[name][0])
        module.main(args[1:])
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling
        print(f"\nnca {name}: interrupted", file=sys.stderr)
        sys.exit(130)
