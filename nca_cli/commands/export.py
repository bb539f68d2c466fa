"""``nca export``: a trained NCA as files that run elsewhere (``nca_cli.api.export``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Export a trained NCA to run outside nca, checked against its PyTorch step.

--format onnx writes step.onnx (one step: inputs
state, fire mask and, where the model adds update noise, the noise; output the next state)
and rollout_<K>.onnx (K steps), for one sample on the task's grid, plus export.json with
the shapes and the check: both graphs are run with onnxruntime on a grown state and seeded
fire masks beside the PyTorch step, and written only when they agree within float32
tolerance (the max abs errors are printed and recorded). Perceptions ONNX Runtime cannot
run (deformable) and multi-scale cascades are refused by name. Needs the export extra:
pip install 'nca-cli[export]'.

--format c writes a dependency-free C99 step, nca_step(state, next, fire_mask) in nca.c and
nca.h, with the model's sizes and weights in nca_model.h (float32, or int8 with a scale per
output row: --quantize int8), the memory it needs (weights, one state, scratch) stated there
and printed, and example.c, which grows the task's seed (nca_seed.h). The step is compiled
with the system's C compiler ($CC, else cc) and run for --steps steps (default 64) beside
the PyTorch step on the same states and fire masks; the max abs error is printed and
recorded (with int8, against the PyTorch step with the same rounded weights, and the drift
from the float model beside it). Perceptions that are not convolutions (attention,
deformable) and models with update noise are refused by name.

--format web writes a self-contained page (index.html, nca.js, model.js with the weights; no
network) that runs the NCA live on the GPU with WebGL2, opens from file:// or any static
server, and lets the mouse erase cells, with a reset, a speed control, the steps per second
and, for conditional tasks, a switch of the condition. Its fire mask is a hash of (seed,
step, cell) that nca_cli.export.web_page.hash_fire reproduces, so its steps can be compared
with PyTorch's (the tests do, in a headless Chromium). nca view serves it."""

EPILOG = """\
examples:
  nca export --run outputs/train/<run> --format onnx
  nca export --run outputs/train/<run>/iter_002000.ckpt --out lizard-onnx --steps 64
  nca export --run outputs/train/<run> --format c --quantize int8
  nca export --run outputs/train/<run> --format web --out lizard-page"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca export",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a run folder or a checkpoint file")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "c", "web"],
        help="what to write (default onnx)",
    )
    p.add_argument(
        "--out", type=Path, help="the folder to write (default: <run folder>/export/<format>)"
    )
    p.add_argument(
        "--steps",
        type=int,
        help="steps checked: of the ONNX rollout graph (default 32), of the C step (default 64)",
    )
    p.add_argument(
        "--quantize",
        default="float32",
        choices=["float32", "int8"],
        help="the C weights' type (default float32)",
    )
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from nca_cli.api import export
    from nca_cli.config import ConfigError
    from nca_cli.export import ExportError
    from nca_cli.measures import EvalError

    try:
        report = export(args.run, args.format, args.out, args.steps, args.quantize)
    except ModuleNotFoundError as err:
        print(
            f"nca export: {err.name} is not installed: pip install 'nca-cli[export]'",
            file=sys.stderr,
        )
        sys.exit(2)
    except (ConfigError, EvalError, ExportError) as err:
        print(f"nca export: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.format == "c":
        print(_c_summary(report))
        return
    if args.format == "web":
        h, w, c = report.grid
        print(
            f"exported to {report.folder}: {', '.join(report.files)} (a {h}x{w} grid of {c} "
            f"channels, {report.weight_bytes:,} bytes of weights); open index.html in a "
            "browser, or: nca view --run " + str(args.run)
        )
        return
    print(
        f"exported to {report.folder}: {report.step} and {report.rollout} "
        f"(state {report.state_shape}); onnxruntime against PyTorch: max abs error "
        f"{report.max_abs_error_step:.3g} after one step, {report.max_abs_error_rollout:.3g} "
        f"after {report.rollout_steps}"
    )


def _c_summary(report: Any) -> str:
    h, w, c = report.grid
    lines = [
        f"exported to {report.folder}: {', '.join(report.files)} ({report.quantization}, "
        f"a {h}x{w} grid of {c} channels)",
        f"memory: {report.weight_bytes:,} bytes of weights, {report.state_bytes:,} per state "
        f"(a step reads one, writes another), {report.scratch_bytes:,} of scratch",
    ]
    if report.max_abs_error is None:
        lines.append("not checked: no C compiler on PATH (set CC=)")
    else:
        check = (
            f"compiled with {report.compiler}; against PyTorch over {report.compared_steps} "
            f"steps: max abs error {report.max_abs_error:.3g}"
        )
        if report.max_abs_error_float is not None:
            check += f" (from the float32 model: {report.max_abs_error_float:.3g})"
        lines.append(check)
    return "\n".join(lines)
