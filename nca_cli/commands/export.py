"""``nca export``: a trained NCA as files that run elsewhere (``nca_cli.api.export``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Export a trained NCA to run outside nca. --format onnx writes step.onnx (one step: inputs
state, fire mask and, where the model adds update noise, the noise; output the next state)
and rollout_<K>.onnx (K steps), for one sample on the task's grid, plus export.json with
the shapes and the check: both graphs are run with onnxruntime on a grown state and seeded
fire masks beside the PyTorch step, and written only when they agree within float32
tolerance (the max abs errors are printed and recorded). Perceptions ONNX Runtime cannot
run (deformable) and multi-scale cascades are refused by name. Needs the export extra:
pip install 'nca-cli[export]'."""

EPILOG = """\
examples:
  nca export --run outputs/train/<run> --format onnx
  nca export --run outputs/train/<run>/iter_002000.ckpt --out lizard-onnx --steps 64"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca export",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a run folder or a checkpoint file")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="what to write (onnx)")
    p.add_argument(
        "--out", type=Path, help="the folder to write (default: <run folder>/export/<format>)"
    )
    p.add_argument("--steps", type=int, default=32, help="steps of the rollout graph (default 32)")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from nca_cli.api import export
    from nca_cli.config import ConfigError
    from nca_cli.export.onnx_graph import ExportError
    from nca_cli.measures import EvalError

    try:
        report = export(args.run, args.format, args.out, args.steps)
    except ModuleNotFoundError as err:
        print(
            f"nca export: {err.name} is not installed: pip install 'nca-cli[export]'",
            file=sys.stderr,
        )
        sys.exit(2)
    except (ConfigError, EvalError, ExportError) as err:
        print(f"nca export: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"exported to {report.folder}: {report.step} and {report.rollout} "
        f"(state {report.state_shape}); onnxruntime against PyTorch: max abs error "
        f"{report.max_abs_error_step:.3g} after one step, {report.max_abs_error_rollout:.3g} "
        f"after {report.rollout_steps}"
    )
