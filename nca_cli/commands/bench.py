"""``nca bench``: the options of ``nca_cli.api.bench`` (``benchmark/``) and its table."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    from rich.table import Table

    from nca_cli.tables import table_console

    table = Table(title=header, title_justify="left")
    gpu = any(r.get("peak_gpu_mb") is not None for r in rows)
    for col in (
        "case",
        "engine",
        "params",
        "s/iter",
        "train cells/s",
        "infer cells/s",
        "peak RSS MB",
        *(["peak GPU MB"] if gpu else []),
        "compile s",
        "GFLOP per iter",
        "GFLOP/s",
        "of matmul",
    ):
        if col in ("case", "engine"):  # names in full; the figures make room
            widest = max(len(str(r[col])) for r in rows)
            table.add_column(col, justify="left", no_wrap=True, min_width=widest)
        else:
            table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["case"],
            r["engine"],
            f"{r['params']:,}",
            f"{r['s_per_iter']:.3f}",
            f"{r['cell_updates_per_s']:.3g}",
            f"{r['infer_cell_updates_per_s']:.3g}",
            f"{r['peak_rss_mb']:.0f}",
            *([f"{r['peak_gpu_mb']:.0f}"] if gpu else []),
            f"{r['compile_s']:.1f}" if r["compile_s"] else "-",
            f"{r['gflop_per_iter']:.2f}",
            f"{r['gflops']:.1f}",
            f"{r['fraction_of_matmul']:.0%}",
        )
    table_console().print(table)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca bench",
        description=(
            "Time training iterations (rollout, backward, optimiser step) and inference "
            "rollouts of named NCA models, each in its own process. Reports the median "
            "seconds per iteration after warm-up, cell updates per second, the process's "
            "peak resident memory, this machine's matrix-multiply rate and each case's "
            "arithmetic rate as a fraction of it (FLOPs counted from the model's layers)."
        ),
        epilog=(
            "Cases are read from the shipped list (growing, growing-dilated, mnist, "
            "segmentation) and from --case-file, a YAML file with a 'cases' mapping in the "
            "same format (see conf/bench.yaml in the source). Examples:\n"
            "  nca bench\n"
            "  nca bench --cases growing mnist --iters 10 --json bench.json\n"
            "  nca bench --case-file my_cases.yaml --threads 4"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="NAME",
        help="cases to run (default: all of --case-file if given, else all shipped cases)",
    )
    p.add_argument(
        "--case-file",
        type=Path,
        metavar="YAML",
        help="a YAML file of more cases ('cases: {name: {channels: ..., grid: ...}}')",
    )
    p.add_argument(
        "--iters", type=int, default=5, help="timed training iterations per case (default 5)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed iterations first, for allocator and library set-up (default 2)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help=f"CPU threads for torch (default: all cores, here {os.cpu_count()})",
    )
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]' (default cpu)")
    p.add_argument(
        "--engine",
        metavar="NAME[,NAME]",
        help="the step for every case, or several to time side by side: auto (the fused "
        "step on the CPU, the dense compiled step on CUDA), fused, dense (compiled), "
        "dense-eager (not compiled) or reference (default: each case's model.engine)",
    )
    p.add_argument(
        "--checkpointing",
        type=int,
        default=0,
        metavar="N",
        help="gradient checkpointing in blocks of N steps for every case (default: the "
        "case's own setting)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from nca_cli.api import bench
    from nca_cli.benchmark.timing import BenchOptions
    from nca_cli.config import ConfigError

    opts = BenchOptions(
        threads=args.threads,
        device=args.device,
        iters=args.iters,
        warmup=args.warmup,
        engines=args.engine.split(",") if args.engine else [],
        checkpointing=args.checkpointing,
    )
    try:
        rows = bench(args.cases, args.case_file, opts)
    except ConfigError as err:
        print(f"nca bench: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # a case's process failed
        print(f"nca bench: {err}", file=sys.stderr)
        sys.exit(1)
    header = (
        f"nca bench: {opts.device}, {opts.threads} threads, torch {rows[0]['torch']}, "
        f"matmul {rows[0]['matmul_gflops']:.0f} GFLOP/s, "
        f"step {'/'.join(sorted({row['engine'] for row in rows}))}"
        f"{' (native operators)' if any(row['native'] for row in rows) else ''}, "
        f"median of {opts.iters} iterations after {opts.warmup} warm-up"
    )
    print_table(rows, header)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"results written to {args.json}")
