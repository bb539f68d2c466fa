"""``nca bench``: how fast the engine trains and runs named models on this machine.

Each case runs in its own child process, so its peak resident memory is its own (a peak
cannot be reset within a process). The machine's matrix-multiply rate is measured with the
same thread count, and each case's arithmetic rate (FLOPs counted from the model's layers,
as if every cell were updated) is reported as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nca_cli.compute import configure_cpu


@dataclass
class BenchCase:
    """An engine model and one training iteration of it; the defaults are ``growing``."""

    description: str = ""
    channels: int = 16
    inputs: int = 0
    conditions: int = 0
    visible: int = 4
    alpha: int | None = 3
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    perception: dict[str, Any] = field(default_factory=lambda: {"kind": "sobel"})
    fire_rate: float = 0.5
    alive_mask: bool = True
    alive_threshold: float = 0.1
    alive_pool: bool = True
    alive_channel: int | None = None  # default: the alpha channel
    padding: str = "zeros"
    update_noise: float = 0.0
    grid: list[int] = field(default_factory=lambda: [48, 48])
    batch: int = 8
    steps: int = 64
    optimizer: str = "adam"
    lr: float = 2e-3
    gradient_checkpointing: int = 0
    bf16: bool = False
    init: str = "random"
    params: int | None = None


def load_cases(path: Path | None) -> dict[str, BenchCase]:
    """The cases of a YAML file with a ``cases`` mapping (the shipped list without a path)."""
    import yaml

    from nca_cli.config import ConfigError, choice, parse, require

    if path is None:
        text = resources.files("nca_cli.conf").joinpath("bench.yaml").read_text()
        where = "bench.yaml"
    else:
        if not path.is_file():
            raise ConfigError(f"invalid value for '--case-file': {str(path)!r} is not a file")
        text, where = path.read_text(), str(path)
    data = yaml.safe_load(text) or {}
    raw = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a non-empty 'cases' mapping of name -> case")
    cases = {}
    for name, node in raw.items():
        case = parse(node or {}, BenchCase, f"cases.{name}")
        require(len(case.grid) == 2, f"cases.{name}.grid", case.grid, "[height, width]")
        require(case.batch > 0 and case.steps > 0, f"cases.{name}.steps", case.steps, "> 0")
        choice(case.init, ["random", "seed"], f"cases.{name}.init")
        choice(case.optimizer, ["adam", "sgd"], f"cases.{name}.optimizer")
        cases[str(name)] = case
    return cases


# -- the child process: one case -----------------------------------------------------------


def count_flops(nca: Any) -> tuple[float, float]:
    """FLOPs per cell and step of (training, inference), counted from the model's layers.

    A multiply-add is 2 FLOPs. Learned layers cost 3x their forward pass in training (the
    forward, the input gradient, the weight gradient); fixed filters 2x (no weight
    gradient). Every cell counts, whether it fires or not: the dense model's arithmetic.
    """
    from nca_cli.engine.perception import perception_flops

    learned, fixed = perception_flops(nca.perception)
    for layer in nca.update.layers:
        learned += 2.0 * layer.in_features * layer.out_features
    return 3 * learned + 2 * fixed, learned + fixed


def peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(name: str, case: BenchCase) -> Any:
    """The case's NCA, initialised as for training (the last layer at zero)."""
    from nca_cli.config import ConfigError
    from nca_cli.engine.layout import ChannelLayout
    from nca_cli.engine.nca import build_nca
    from nca_cli.engine.schema import ModelConfig

    try:
        layout = ChannelLayout(
            case.channels, case.inputs, case.conditions, case.visible, case.alpha
        )
    except ValueError as err:
        raise ConfigError(f"case {name!r}: {err}") from None
    model = ModelConfig(
        channels=case.channels,
        hidden=list(case.hidden),
        activation=case.activation,
        fire_rate=case.fire_rate,
        alive_mask=case.alive_mask,
        alive_threshold=case.alive_threshold,
        alive_pool=case.alive_pool,
        padding=case.padding,
        update_noise=case.update_noise,
    )
    alive = layout.alpha_channel if case.alive_channel is None else case.alive_channel
    nca = build_nca(model, case.perception, layout, alive)
    params = sum(p.numel() for p in nca.parameters())
    if case.params is not None and params != case.params:
        raise ConfigError(f"case {name!r} has {params} parameters; 'params' says {case.params}")
    return nca


def run_case(name: str, case: BenchCase, opts: dict[str, Any]) -> dict[str, Any]:
    """Build the case's model and time its training iterations and inference rollouts."""
    import torch
    import torch.nn.functional as F

    from nca_cli.engine.native import ops

    configure_cpu(opts["threads"])
    device = torch.device(opts["device"])
    torch.manual_seed(0)
    nca = build_model(name, case).to(device)
    nca.fast = opts["engine"] == "fast"
    layout = nca.layout
    params = sum(p.numel() for p in nca.parameters())
    h, w = case.grid
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((case.batch, case.channels, h, w), generator=g)
    if case.init == "seed":
        x0[:, layout.fixed :] = 0.0
        x0[:, layout.fixed :, h // 2, w // 2] = 1.0
    target = torch.rand((case.batch, layout.visible, h, w), generator=g).to(device)
    x0 = x0.to(device)
    if case.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(nca.parameters(), lr=case.lr)
    else:
        opt = torch.optim.SGD(nca.parameters(), lr=case.lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.bf16)
    gen = torch.Generator(device=device).manual_seed(1)
    checkpoint_every = opts["checkpointing"] or case.gradient_checkpointing

    alive = [1.0]

    def iteration() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            final, _ = nca.rollout(x0, case.steps, gen, checkpoint_every)
        loss = F.mse_loss(final[:, layout.visible_slice].float(), target)
        loss.backward()
        opt.step()
        _sync(device)
        elapsed = time.perf_counter() - start
        if nca.alive_channel is not None:  # the fast step skips dead regions: say how many
            alive[0] = float(nca.alive(final.detach()).float().mean())
        return elapsed

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = peak_rss_mb()
    for _ in range(opts["warmup"]):
        iteration()
    times = [iteration() for _ in range(opts["iters"])]
    train_peak = peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    def infer() -> float:
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            nca.rollout(x0, case.steps, gen)
        _sync(device)
        return time.perf_counter() - start

    infer()
    infer_s = statistics.median(infer() for _ in range(max(opts["iters"], 3)))
    with autocast:  # the engine's choice, as the iterations ran
        fused = nca.uses_fused_step(x0)
    native = fused and device.type == "cpu" and ops() is not None
    s_per_iter = statistics.median(times)
    cells = case.batch * h * w * case.steps
    train_flops, infer_flops = count_flops(nca)
    return {
        "case": name,
        "engine": opts["engine"],
        "native": native,
        "params": params,
        "s_per_iter": s_per_iter,
        "s_per_iter_min": min(times),
        "cell_updates_per_s": cells / s_per_iter,
        "infer_s": infer_s,
        "infer_cell_updates_per_s": cells / infer_s,
        "peak_rss_mb": train_peak,
        "base_rss_mb": base_rss,
        "peak_gpu_mb": gpu_peak,
        "gflop_per_iter": train_flops * cells / 1e9,
        "gflops": train_flops * cells / s_per_iter / 1e9,
        "infer_gflops": infer_flops * cells / infer_s / 1e9,
        "gradient_checkpointing": checkpoint_every,
        "final_alive_fraction": alive[0],
    }


def worker() -> int:
    """Entry point of the child process: a case as JSON on stdin, results as JSON on stdout."""
    job = json.loads(sys.stdin.read())
    row = run_case(job["name"], BenchCase(**job["case"]), job["opts"])
    print(json.dumps(row))
    return 0


def spawn(name: str, case: BenchCase, opts: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its peak RSS is this case's alone."""
    code = "import sys; from nca_cli.commands.bench import worker; sys.exit(worker())"
    job = json.dumps({"name": name, "case": asdict(case), "opts": opts})
    env = {**os.environ, "OMP_NUM_THREADS": str(opts["threads"])}
    proc = subprocess.run(
        [sys.executable, "-c", code], input=job, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {name!r} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the parent process ----------------------------------------------------------------------


def matmul_gflops(device_name: str, threads: int, seconds: float = 1.0) -> float:
    """This machine's float32 matrix-multiply rate: the best of repeated large products."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for i in range(1000):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        if i > 0:  # the first product pays for the library's set-up
            best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline and i >= 3:
            break
    return 2.0 * n**3 / best / 1e9


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    from rich.table import Table

    from nca_cli.tables import table_console

    table = Table(title=header, title_justify="left")
    for col in (
        "case",
        "params",
        "s/iter",
        "train cells/s",
        "infer cells/s",
        "peak RSS MB",
        "GFLOP/iter",
        "GFLOP/s",
        "of matmul",
    ):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(
            r["case"],
            f"{r['params']:,}",
            f"{r['s_per_iter']:.3f}",
            f"{r['cell_updates_per_s']:.3g}",
            f"{r['infer_cell_updates_per_s']:.3g}",
            f"{r['peak_rss_mb']:.0f}",
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
        choices=["fast", "reference"],
        default="fast",
        help="the fast step (default) or the plain reference step, to compare",
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
    from nca_cli.config import ConfigError

    try:
        if args.iters < 1 or args.warmup < 0 or args.threads < 1:
            raise ConfigError("--iters and --threads must be >= 1 and --warmup >= 0")
        if args.device != "cpu" and not args.device.startswith("cuda"):
            raise ConfigError(f"invalid value for '--device': {args.device!r}; expected cpu, cuda")
        cases = load_cases(None)
        chosen = list(cases)
        if args.case_file is not None:
            extra = load_cases(args.case_file)
            cases.update(extra)
            chosen = list(extra)
        chosen = args.cases or chosen
        unknown = [c for c in chosen if c not in cases]
        if unknown:
            raise ConfigError(
                f"unknown case(s) {', '.join(unknown)}; known: {', '.join(sorted(cases))}"
            )
    except ConfigError as err:
        print(f"nca bench: error: {err}", file=sys.stderr)
        sys.exit(2)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("nca bench: error: --device cuda but no CUDA device is available", file=sys.stderr)
        sys.exit(2)
    opts = {
        "threads": args.threads,
        "device": args.device,
        "iters": args.iters,
        "warmup": args.warmup,
        "engine": args.engine,
        "checkpointing": args.checkpointing,
    }
    rate = matmul_gflops(args.device, args.threads)
    rows = []
    for name in chosen:
        try:
            row = spawn(name, cases[name], opts)
        except RuntimeError as err:
            print(f"nca bench: {err}", file=sys.stderr)
            sys.exit(1)
        row.update(
            matmul_gflops=rate,
            fraction_of_matmul=row["gflops"] / rate,
            threads=args.threads,
            device=args.device,
            torch=torch.__version__,
        )
        rows.append(row)
    header = (
        f"nca bench: {args.device}, {args.threads} threads, torch {torch.__version__}, "
        f"matmul {rate:.0f} GFLOP/s, engine {args.engine}"
        f"{' (native operators)' if any(row['native'] for row in rows) else ''}, "
        f"median of {args.iters} "
        f"iterations after {args.warmup} warm-up"
    )
    print_table(rows, header)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"results written to {args.json}")
