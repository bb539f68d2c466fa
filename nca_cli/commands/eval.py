"""``nca eval``: regeneration of a trained NCA after damage or mutation, on the protocol of
the NCA review (Spitznagel & Keuper 2026), measured with LPIPS and the task's metrics."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from nca_cli.engine.schema import DAMAGE_KINDS
from nca_cli.measures.steps import ProtocolSteps, review_steps

DESCRIPTION = """\
Evaluate how a trained NCA regenerates. Samples grow from their seeds (or, for data
tasks, from validation inputs); Stage 1 is the metric averaged over steps 64-96, Stage 2
the metric at step 149; at step 150 the state is damaged (or the condition/input is
mutated); Stage 3 is the metric at step 449. Recovery% = (m_final - m_d) / (m_pre - m_d)
* 100 with m_pre = Stage 2 and m_d measured right after the perturbation (undefined, with a
reason, when the perturbation does not change the metric). Image tasks are measured with
LPIPS (the primary metric), MSE and PSNR; other tasks with their own metrics (Dice,
accuracy, ...). Outputs go to <run>/eval/<timestamp>/: eval.json, metrics.png (metric vs
step), strip.png (before, damaged, recovered), rollout.gif and uncertainty.png (per-cell
std over the stochastic rollouts), and to W&B in the training run's group.

With --sets (or --compare) it measures sample sets instead: every sample of each set (train,
val and the task's own, e.g. edges2emoji's ood and drawings) grows for --steps steps;
LPIPS and MSE where a ground truth exists; grid.png shows input | run | [--compare run] |
target per sample and sets.json holds the figures."""

EPILOG = """\
examples:
  nca eval --damage circle                     the latest run under outputs/train
  nca eval --run outputs/train/<run> --damage half --side right
  nca eval --damage circle --center 0.2 -0.1 --radius 0.3 --samples 16 --seed 1
  nca eval --damage rect --size 0.3 0.5         sides drawn per sample in [0.3, 0.5]
  nca eval --mutate                             conditional / classification tasks
  nca eval --damage noise --rate 0.3 fire_rate=0.3   key=value overrides the saved config
  nca eval --stage1 8 12 --stage2 19 --perturb-at 20 --stage3 40   a short protocol
  nca eval --run outputs/train/<run> --sets                 LPIPS/MSE of every set
  nca eval --run outputs/train/<mse run> --compare outputs/train/<gan run>   side by side
  nca eval --run outputs/train/<run> --sets val ood --steps 96 --show 8"""

# A key=value override (Hydra's grammar); split off before argparse so that an option
# taking one or two numbers (--radius 0.3) never swallows it.
OVERRIDE = re.compile(r"[+~]?[A-Za-z_][\w.]*=")
# Which damage kinds read each shape option.
SHAPE_OPTIONS = {
    "center": ("circle",),
    "radius": ("circle",),
    "size": ("rect",),
    "side": ("half",),
    "rate": ("noise",),
}


def _range(parser: argparse.ArgumentParser, name: str, values: list[float] | None) -> list[float]:
    """One value (fixed) or two (drawn uniformly per sample) as a [low, high] range."""
    assert values is not None
    if len(values) > 2:
        parser.error(f"--{name} takes one value or a range LOW HIGH, not {len(values)} values")
    return [values[0], values[-1]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca eval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("which run").add_mutually_exclusive_group()
    where.add_argument(
        "--run",
        type=Path,
        metavar="RUN",
        help="a training run folder (its last.ckpt), a checkpoint file or zoo:NAME; default: "
        "the most recent run under $NCA_OUTPUT_DIR/train (default outputs/train)",
    )
    where.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="a checkpoint file to evaluate instead"
    )
    hit = p.add_argument_group("perturbation at --perturb-at")
    hit.add_argument(
        "--damage",
        choices=[*DAMAGE_KINDS, "none"],
        help="cells to wipe (every channel but fixed inputs): circle = a disc, rect = a "
        "rectangle placed at random, half = one half of the grid, noise = random cells, "
        "none = no perturbation (default: circle, unless --mutate)",
    )
    hit.add_argument(
        "--center",
        type=float,
        nargs=2,
        metavar=("X", "Y"),
        help="circle centre as offsets from the middle, in fractions of half of each side "
        "(-1 left/top edge, 1 right/bottom edge; default 0 0)",
    )
    hit.add_argument(
        "--radius",
        type=float,
        nargs="+",
        metavar="R",
        help="circle radius in fractions of half the shorter side; two values draw it per "
        "sample from [LOW, HIGH] (default 0.4)",
    )
    hit.add_argument(
        "--size",
        type=float,
        nargs="+",
        metavar="F",
        help="rect sides in fractions of each side of the grid; two values draw them per "
        "sample (default 0.4); the rectangle is placed at random (by --seed)",
    )
    hit.add_argument(
        "--side",
        choices=["left", "right", "top", "bottom", "random"],
        help="which half the half damage removes (default left): exactly half the columns or rows",
    )
    hit.add_argument(
        "--rate",
        type=float,
        nargs="+",
        metavar="P",
        help="noise damage: probability that a cell is wiped; two values draw it per sample "
        "(default 0.5)",
    )
    hit.add_argument(
        "--mutate",
        action="store_true",
        help="instead of damage, switch the condition of a conditional task (or the input "
        "of a classification task) with the task's mutation, keeping the state",
    )
    proto = p.add_argument_group("protocol")
    steps = review_steps()  # the defaults of --stage1, --stage2, --perturb-at and --stage3
    proto.add_argument(
        "--samples",
        type=int,
        default=8,
        metavar="N",
        help="rollouts (samples) evaluated together; the uncertainty map is their per-cell "
        "std (default 8)",
    )
    proto.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the fire-rate randomness and of random damage: the same seed gives "
        "the same figures (default 0)",
    )
    proto.add_argument(
        "--split",
        default="val",
        help="evaluation split of data tasks (val or test; default val)",
    )
    proto.add_argument(
        "--stage1",
        type=int,
        nargs=2,
        default=steps.stage1,
        metavar=("FIRST", "LAST"),
        help="Stage 1: the metric averaged over these steps, both included (default "
        f"{steps.stage1[0]} {steps.stage1[1]})",
    )
    proto.add_argument(
        "--stage2",
        type=int,
        default=steps.stage2,
        metavar="STEP",
        help="Stage 2: the metric before the perturbation, m_pre of Recovery%% (default "
        f"{steps.stage2})",
    )
    proto.add_argument(
        "--perturb-at",
        type=int,
        default=steps.perturb_at,
        metavar="STEP",
        help=f"the state after this many steps is perturbed (default {steps.perturb_at})",
    )
    proto.add_argument(
        "--stage3",
        type=int,
        default=steps.stage3,
        metavar="STEP",
        help=f"Stage 3: the metric after regrowth, m_final of Recovery%% (default {steps.stage3})",
    )
    sets = p.add_argument_group("sample sets and comparison (instead of the protocol)")
    sets.add_argument(
        "--sets",
        nargs="*",
        metavar="SET",
        help="grow these sets (default, with no names: every set of the task, e.g. train val "
        "ood drawings) and measure LPIPS and MSE where a ground truth exists; writes "
        "sets.json and grid.png (input | run | target)",
    )
    sets.add_argument(
        "--compare",
        type=Path,
        metavar="RUN",
        help="a second run (folder or checkpoint) of the same task and data, e.g. loss=gan "
        "beside loss=mse: its column joins the grid (input | run | RUN | target) and its "
        "figures the table; implies --sets",
    )
    sets.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="rollout steps of --sets (default: the run's trainer.steps.max)",
    )
    sets.add_argument(
        "--show",
        type=int,
        default=4,
        metavar="K",
        help="samples per set in grid.png (default 4)",
    )
    out = p.add_argument_group("measurement and output")
    out.add_argument(
        "--curve-every",
        type=int,
        default=5,
        metavar="K",
        help="measure every K steps for the metric-vs-step plot (the stage steps are always "
        "measured; 0: only those; default 5; LPIPS makes small K slow)",
    )
    out.add_argument(
        "--lpips-net",
        choices=["alex", "vgg", "squeeze"],
        default="alex",
        help="LPIPS backbone (default alex, as published); weights from TORCH_HOME",
    )
    out.add_argument(
        "--no-wandb",
        action="store_true",
        help="do not log to W&B (default: log as the training run did, offline unless its "
        "logger.mode says otherwise; logger.mode=... overrides)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="changes to the saved config, e.g. fire_rate=0.3, model.alive_threshold=0.2, "
        "device=cuda (the architecture cannot change)",
    )
    return p


def main(argv: list[str]) -> None:
    parser = build_parser()
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_intermixed_args([a for a in argv if not OVERRIDE.match(a)])
    if args.overrides:
        parser.error(f"unrecognised argument {args.overrides[0]!r}: overrides are key=value")
    if args.mutate and args.damage not in (None, "none"):
        parser.error("--mutate replaces damage: drop --damage")
    if args.compare is not None and args.sets is None:
        args.sets = []
    if args.sets is not None:
        _sets(parser, args, overrides)
        return
    kind = "none" if args.mutate else (args.damage or "circle")
    for option, kinds in SHAPE_OPTIONS.items():
        if getattr(args, option) is not None and kind not in kinds:
            parser.error(f"--{option} applies to --damage {' or '.join(kinds)}, not {kind}")

    from nca_cli.api import evaluate
    from nca_cli.evaluation.runs import find_checkpoint
    from nca_cli.measures.protocol import ProtocolConfig, default_damage

    damage = None if kind == "none" else default_damage(kind)
    if damage is not None:
        if args.center is not None:
            damage.center, damage.center_y = [args.center[0]] * 2, [args.center[1]] * 2
        for option in ("radius", "size", "rate"):
            if getattr(args, option) is not None:
                setattr(damage, option, _range(parser, option, getattr(args, option)))
        damage.side = args.side or damage.side
    protocol = ProtocolConfig(
        steps=ProtocolSteps(list(args.stage1), args.stage2, args.perturb_at, args.stage3),
        samples=args.samples,
        seed=args.seed,
        damage=damage,
        mutate=args.mutate,
        split=args.split,
        curve_every=args.curve_every,
        lpips_net=args.lpips_net,
    )

    def run() -> None:
        checkpoint = find_checkpoint(args.run, args.checkpoint)
        print(f"evaluating {checkpoint}", file=sys.stderr)
        evaluate(checkpoint, protocol, overrides, wandb=not args.no_wandb)

    _exit_cleanly(run)


def _exit_cleanly(action: Callable[[], None]) -> None:
    """Run ``action``; bad input (a run, checkpoint, config or data error) exits with status
    2 and one line naming it, Ctrl-C with 130."""
    from nca_cli.config import ConfigError
    from nca_cli.datasets.storage import DataError
    from nca_cli.measures import EvalError
    from nca_cli.training.checkpoint import CheckpointError

    try:
        action()
    except (EvalError, ConfigError, CheckpointError, DataError) as err:
        print(f"nca eval: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nca eval: interrupted", file=sys.stderr)
        sys.exit(130)


def _sets(parser: argparse.ArgumentParser, args: argparse.Namespace, overrides: list[str]) -> None:
    """``--sets`` / ``--compare``: measure the task's sample sets, not the protocol."""
    protocol_only = ["damage", "mutate", *SHAPE_OPTIONS]
    for option in protocol_only:
        if getattr(args, option) not in (None, False):
            parser.error(f"--{option} belongs to the regeneration protocol, not to --sets")
    if args.split != "val":
        parser.error("--split belongs to the protocol: name the sets with --sets SET ...")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.show < 1:
        parser.error("--show must be >= 1")

    from nca_cli.api import evaluate_sets
    from nca_cli.evaluation.runs import find_checkpoint

    def run() -> None:
        paths = [find_checkpoint(args.run, args.checkpoint)]
        if args.compare is not None:
            paths.append(find_checkpoint(args.compare))
        print("evaluating " + " and ".join(str(p) for p in paths), file=sys.stderr)
        evaluate_sets(
            paths,
            args.sets,
            args.steps,
            args.seed,
            overrides,
            args.lpips_net,
            args.show,
            not args.no_wandb,
        )

    _exit_cleanly(run)
