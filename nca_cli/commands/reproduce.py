"""``nca reproduce``: the published tables as commands."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DESCRIPTION = """\
Reproduce a published table: train every run the reproduction lists (its recipe's overrides,
once per seed), evaluate them with the paper's protocol, and write
outputs/reproduce/<name>/<timestamp>/table.md and table.json: per row the published value,
ours (mean ± std over seeds), the difference and the budget used, with plots (metric against
training iterations, metric against rollout step) and grid.png of the runs' final states.
Where the paper's own code is kept in the repository (mnist-notebook), it runs too, for the
same iterations and seed, and its figures form their own column.

Running the same reproduction on its folder again (--dir, or --resume for the latest)
skips finished runs and continues interrupted ones from their last.ckpt. Every run is one
`nca train` command, listed in table.md and plan.json; each is a W&B run in the group
reproduce-<name>-<folder>."""

EPILOG = """\
examples:
  nca reproduce --list                          the reproductions and their sources
  nca reproduce mnist-notebook --budget 0.1     10% of every recipe's iterations
  nca reproduce review-table1 --jobs 2          two runs at a time
  nca reproduce mnist-review --resume           continue the latest mnist-review folder
  nca reproduce mnist-review --runs mse         the MSE run only (the others can follow)
  nca reproduce distill --dir outputs/reproduce/distill/<stamp>
  nca reproduce mnist-review device=cuda        key=value overrides go to every run

Exit status: 0 every run finished, 1 a run failed (the table marks it), 2 bad input,
130 interrupted (run again with --resume)."""

OVERRIDE = re.compile(r"[+~]?[A-Za-z_][\w.]*=")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca reproduce",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="the reproduction (see --list)")
    p.add_argument("--list", action="store_true", help="name the reproductions and exit")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        metavar="F",
        help="scale every run's iterations, learning-rate milestones and warm-up by F "
        "(default 1: the published length); the table states it",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dir", type=Path, metavar="DIR", help="the reproduction folder (resumed if it is one)"
    )
    where.add_argument(
        "--resume", action="store_true", help="continue the latest folder of this reproduction"
    )
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="runs trained at a time (default 1)"
    )
    p.add_argument(
        "--runs",
        metavar="NAME[,NAME]",
        help="train and evaluate only these runs of the reproduction (default: all); the "
        "table keeps the rows of runs finished earlier in the folder",
    )
    p.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="evaluate at most N samples per evaluation (default: each protocol's own)",
    )
    p.add_argument(
        "--no-original",
        action="store_true",
        help="do not run the paper's own code even where it is installed",
    )
    p.add_argument(
        "--original-python",
        metavar="PATH",
        help="the Python that runs the paper's own code (default: this one; it needs the "
        "extra the reproduction names, e.g. pip install 'nca-cli[original]')",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    return p


def list_reproductions() -> None:
    from nca_cli.reproduction.spec import load, names

    for name in names():
        spec = load(name)
        runs = sum(len(r.seeds) for r in spec.runs.values())
        counts = f"{runs} run{'s' * (runs != 1)}, {len(spec.rows)} rows"
        print(f"{name:<16} {spec.title} ({counts})\n{'':<17}{spec.source}")


def main(argv: list[str]) -> None:
    parser = build_parser()
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_intermixed_args([a for a in argv if not OVERRIDE.match(a)])
    if args.overrides:
        parser.error(f"unrecognised argument {args.overrides[0]!r}: overrides are key=value")
    if args.list:
        list_reproductions()
        return
    if not args.name:
        parser.error("name a reproduction (nca reproduce --list names them)")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.samples is not None and args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")

    from hydra.errors import HydraException

    from nca_cli.api import reproduce
    from nca_cli.config import ConfigError
    from nca_cli.datasets.storage import DataError
    from nca_cli.reproduction.reproduce import latest

    folder = args.dir
    try:
        if args.resume:
            folder = latest(args.name)
            if folder is None:
                raise ConfigError(f"no folder of reproduction {args.name!r} to resume")
        outcome = reproduce(
            args.name,
            folder,
            budget=args.budget,
            overrides=overrides,
            runs=args.runs.split(",") if args.runs else None,
            jobs=args.jobs,
            samples=args.samples,
            original=not args.no_original,
            original_python=args.original_python,
        )
    except (ConfigError, DataError, HydraException) as err:
        print(f"nca reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            f"nca reproduce: interrupted; finished runs are kept. Continue with:\n"
            f"  nca reproduce {args.name} --resume --budget {args.budget:g}",
            file=sys.stderr,
        )
        sys.exit(130)
    print(outcome.table.read_text())
    print(f"table: {outcome.table}")
    if outcome.failed:
        print(
            f"nca reproduce: {len(outcome.failed)} runs did not finish: "
            + ", ".join(outcome.failed)
            + f" (their reproduce.log says why); run again to retry:\n"
            f"  nca reproduce {args.name} --dir {outcome.folder} --budget {args.budget:g}",
            file=sys.stderr,
        )
        sys.exit(1)
