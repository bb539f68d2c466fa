"""``nca zoo``: the trained models shipped with nca (``nca_cli.api.zoo``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
The model zoo: trained NCAs shipped with nca (weights and config only), each with its
figures, the command that trained it, and a golden check: a short seeded evaluation of its
task whose figure must stay within a stated tolerance of the one recorded when it was
added, so that an engine change that breaks a trained model is caught (the tests run every
check). Every command that takes a run takes zoo:NAME: nca eval --run zoo:NAME, nca export
--run zoo:NAME, nca view --run zoo:NAME, nca train init=zoo:NAME.

  nca zoo                 list the models with their figures and commands
  nca zoo check [NAME..]  run the golden checks now (exit status 1 when one fails)
  nca zoo add NAME --run RUN --description ... --command ... --metric M --tolerance T ...
                          add a run (for maintainers, in a source checkout)"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca zoo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action")
    check = sub.add_parser("check", help="run the golden checks")
    check.add_argument("names", nargs="*", help="zoo models (default: all)")
    add = sub.add_parser("add", help="add a run to the zoo (maintainers)")
    add.add_argument("name")
    add.add_argument("--run", type=Path, required=True, help="a run folder or checkpoint")
    add.add_argument("--description", required=True)
    add.add_argument("--command", required=True, help="the command that trained it")
    add.add_argument("--source", default="", help="where its figures come from")
    add.add_argument(
        "--figure", action="append", default=[], metavar="LABEL=VALUE", help="a figure to list"
    )
    add.add_argument("--metric", required=True, help="the golden check's task metric")
    add.add_argument("--tolerance", type=float, required=True, help="absolute")
    add.add_argument("--split", default="val")
    add.add_argument("--steps", type=int, required=True)
    add.add_argument("--samples", type=int, default=0, help="cases of a data task (0: all)")
    add.add_argument("--batch-size", type=int, default=8)
    add.add_argument("--override", action="append", default=[], help="of the evaluation")
    return p


def _figures(pairs: list[str]) -> dict[str, float]:
    figures = {}
    for pair in pairs:
        label, sep, value = pair.rpartition("=")
        if not sep:
            raise ValueError(f"--figure {pair!r}: expected LABEL=VALUE")
        figures[label] = float(value)
    return figures


def _listing(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        m = row["model"]
        g = m.golden
        lines.append(
            f"zoo:{m.name}  ({m.task}, {m.parameters:,} parameters, iteration {m.iteration:,}, "
            f"{row['bytes'] / 1024:.0f} KiB)"
        )
        lines.append(f"  {m.description}")
        if m.metrics:
            lines.append("  " + ", ".join(f"{k} {v:.4g}" for k, v in m.metrics.items()))
        lines.append(
            f"  golden: {g.metric} {g.value:.6g} ± {g.tolerance:g} ({g.split}, {g.steps} steps"
            + (f", {g.samples} samples" if g.samples else "")
            + ")"
        )
        if "figure" in row:
            verdict = "ok" if row["passed"] else "FAILED"
            lines.append(f"  checked now: {row['figure']:.6g} {verdict}")
        lines.append(f"  trained by: {m.command}")
    return "\n".join(lines) if lines else "the zoo is empty"


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from nca_cli import api
    from nca_cli.config import ConfigError
    from nca_cli.measures import EvalError

    try:
        if args.action == "add":
            from nca_cli.evaluation.zoo import add_model
            from nca_cli.zoo import Golden

            golden = Golden(
                metric=args.metric,
                value=0.0,
                tolerance=args.tolerance,
                split=args.split,
                steps=args.steps,
                samples=args.samples,
                batch_size=args.batch_size,
                overrides=args.override,
            )
            model = add_model(
                args.name,
                args.run,
                args.description,
                args.command,
                _figures(args.figure),
                golden,
                args.source,
            )
            print(f"added zoo:{model.name}: golden {golden.metric} {model.golden.value:.6g}")
            return
        rows = api.zoo(args.names if args.action == "check" else (), args.action == "check")
    except (ConfigError, EvalError, ValueError) as err:
        print(f"nca zoo: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(_listing(rows))
    if any(not row.get("passed", True) for row in rows):
        sys.exit(1)
