"""Timing one bench case in a child process of its own, so that its peak resident memory is
its own (a peak cannot be reset within a process); the machine's matrix-multiply rate is
measured with the same thread count, and each case's arithmetic rate (FLOPs counted from
the model's layers, as if every cell were updated) is reported as a fraction of it."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nca_cli.benchmark.cases import BenchCase, build_model, load_cases, parse_case
from nca_cli.compute import configure_cpu
from nca_cli.config import ConfigError

# model.engine's names, and the dense step without torch.compile.
BENCH_ENGINES = ("auto", "fused", "dense", "dense-eager", "reference")


@dataclass
class BenchOptions:
    """How every case is timed (``nca bench``'s options)."""

    threads: int = os.cpu_count() or 1
    device: str = "cpu"
    iters: int = 5  # timed training iterations (the median is reported)
    warmup: int = 2  # untimed iterations first
    # The steps to time side by side, each case once per engine (see BENCH_ENGINES; empty:
    # each case's own model.engine); ``engine`` is the one a case's process times.
    engines: list[str] = field(default_factory=list)
    engine: str | None = None
    checkpointing: int = 0  # gradient checkpointing every N steps (0: the case's own)


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


def run_case(name: str, case: BenchCase, opts: BenchOptions) -> dict[str, Any]:
    """Build the case's model and time its training iterations and inference rollouts."""
    import torch
    import torch.nn.functional as F

    from nca_cli.engine.native import ops

    configure_cpu(opts.threads)
    device = torch.device(opts.device)
    torch.manual_seed(0)
    nca = build_model(name, case).to(device)
    if opts.engine == "dense-eager":
        nca.engine, nca.compile_dense = "dense", False
    elif opts.engine is not None:
        nca.engine = opts.engine
    layout = nca.layout
    params = sum(p.numel() for p in nca.parameters())
    h, w = case.grid
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((case.batch, case.model.channels, h, w), generator=g)
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
    checkpoint_every = opts.checkpointing or case.gradient_checkpointing

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
    warmup = [iteration() for _ in range(opts.warmup)]  # the first one compiles, if any
    times = [iteration() for _ in range(opts.iters)]
    train_peak = peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    def infer() -> float:
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            nca.rollout(x0, case.steps, gen)
        _sync(device)
        return time.perf_counter() - start

    infer()
    infer_s = statistics.median(infer() for _ in range(max(opts.iters, 3)))
    with autocast:  # the engine's choice, as the iterations ran
        kind = nca.step_kind(x0)
    native = kind == "fused" and device.type == "cpu" and ops() is not None
    s_per_iter = statistics.median(times)
    cells = case.batch * h * w * case.steps
    train_flops, infer_flops = count_flops(nca)
    eager = kind == "dense" and not nca.compile_dense
    return {
        "case": name,
        "engine": f"{kind}-eager" if eager else kind,
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
        "first_iter_s": (warmup or times)[0],
        "compile_s": nca.compile_seconds,
        "gflop_per_iter": train_flops * cells / 1e9,
        "gflops": train_flops * cells / s_per_iter / 1e9,
        "infer_gflops": infer_flops * cells / infer_s / 1e9,
        "gradient_checkpointing": checkpoint_every,
        "final_alive_fraction": alive[0],
    }


def worker() -> int:
    """Entry point of the child process: a case as JSON on stdin, results as JSON on stdout."""
    job = json.loads(sys.stdin.read())
    row = run_case(job["name"], parse_case(job["case"], job["name"]), BenchOptions(**job["opts"]))
    print(json.dumps(row))
    return 0


def spawn(name: str, case: BenchCase, opts: BenchOptions) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its peak RSS is this case's alone."""
    code = "import sys; from nca_cli.benchmark.timing import worker; sys.exit(worker())"
    job = json.dumps({"name": name, "case": asdict(case), "opts": asdict(opts)})
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
    proc = subprocess.run(
        [sys.executable, "-c", code], input=job, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {name!r} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def select_cases(names: list[str] | None, case_file: Path | None) -> dict[str, BenchCase]:
    """The cases ``names`` of the shipped list and ``case_file``; by default all of
    ``case_file`` if given, else all shipped cases."""
    cases = load_cases(None)
    chosen = list(cases)
    if case_file is not None:
        extra = load_cases(case_file)
        cases.update(extra)
        chosen = list(extra)
    chosen = names or chosen
    unknown = [c for c in chosen if c not in cases]
    if unknown:
        raise ConfigError(
            f"unknown case(s) {', '.join(unknown)}; known: {', '.join(sorted(cases))}"
        )
    return {name: cases[name] for name in chosen}


def run_bench(cases: dict[str, BenchCase], opts: BenchOptions) -> list[dict[str, Any]]:
    """Time every case (once per engine of ``opts.engines``), each in its own process; one
    row of figures per case and engine."""
    if opts.iters < 1 or opts.warmup < 0 or opts.threads < 1:
        raise ConfigError("--iters and --threads must be >= 1 and --warmup >= 0")
    if opts.device != "cpu" and not opts.device.startswith("cuda"):
        raise ConfigError(f"invalid value for '--device': {opts.device!r}; expected cpu, cuda")
    import torch

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available")
    unknown = [e for e in opts.engines if e not in BENCH_ENGINES]
    if unknown:
        raise ConfigError(
            f"invalid value for '--engine': {','.join(unknown)}; expected a comma-separated "
            f"list of {', '.join(BENCH_ENGINES)}"
        )
    rate = matmul_gflops(opts.device, opts.threads)
    rows = []
    engines: list[str | None] = list(opts.engines) or [None]
    for name, case in cases.items():
        for engine in engines:
            rows.append(spawn(name, case, replace(opts, engines=[], engine=engine)))
    for row in rows:
        row.update(
            matmul_gflops=rate,
            fraction_of_matmul=row["gflops"] / rate,
            threads=opts.threads,
            device=opts.device,
            torch=torch.__version__,
        )
    return rows
