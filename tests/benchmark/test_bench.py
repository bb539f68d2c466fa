"""``nca bench``: its case list, its FLOP count and its JSON output (no timings asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nca_cli.benchmark.cases import build_model, load_cases
from nca_cli.benchmark.timing import count_flops
from nca_cli.config import ConfigError
from nca_cli.engine import native

KEYS = (
    "case",
    "s_per_iter",
    "cell_updates_per_s",
    "peak_rss_mb",
    "matmul_gflops",
    "fraction_of_matmul",
    "infer_cell_updates_per_s",
    "threads",
    "params",
)


def nca(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shipped_cases_build_the_published_models() -> None:
    cases = load_cases(None)
    assert {"growing", "growing-dilated", "mnist", "segmentation"} <= set(cases)
    counts = {
        name: sum(p.numel() for p in build_model(name, c).parameters()) for name, c in cases.items()
    }
    assert counts["growing"] == 8336 and counts["mnist"] == 22499
    growing = cases["growing"]
    assert (growing.batch, growing.steps, growing.grid) == (8, 64, [48, 48])
    assert growing.model.fire_rate == 0.5
    assert cases["growing-dilated"].perception["kind"] == "multi"
    # The arithmetic of one growing iteration, as the performance issue counts it: ~61 GFLOP.
    train, infer = count_flops(build_model("growing", growing))
    gflop = train * 8 * 48 * 48 * 64 / 1e9
    assert 58 < gflop < 62 and infer < train / 2.5


def test_the_growing_case_is_the_growing_presets_model() -> None:
    """Bench cases use the training config's own model and perception sections: the shipped
    growing case times the model that ``nca train task=growing`` trains."""
    from nca_cli.composition import compose
    from nca_cli.config import parse
    from nca_cli.engine.schema import ModelConfig

    config = compose(["task=growing"])
    case = load_cases(None)["growing"]
    assert case.model == parse(config["model"], ModelConfig, "model")
    assert case.perception.items() <= config["perception"].items()  # the rest: defaults


def test_bad_case_files_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  x: {chanels: 16}\n")
    with pytest.raises(ConfigError, match="chanels"):
        load_cases(bad)
    bad.write_text("cases:\n  x: {model: {fire_rate: 2}}\n")  # the engine's own checks
    with pytest.raises(ConfigError, match=r"cases\.x: .*model\.fire_rate"):
        load_cases(bad)
    bad.write_text("cases:\n  x: {model: {scales: [2, 1]}}\n")  # a cascade is not one NCA
    with pytest.raises(ConfigError, match="scales"):
        load_cases(bad)
    bad.write_text("cases:\n  x: {params: 5}\n")
    with pytest.raises(ConfigError, match="8336 parameters"):
        build_model("x", load_cases(bad)["x"])
    with pytest.raises(ConfigError, match="not a file"):
        load_cases(tmp_path / "missing.yaml")


def test_bench_json_on_a_tiny_case(tmp_path: Path) -> None:
    cases = tmp_path / "tiny.yaml"
    cases.write_text(
        "cases:\n"
        "  tiny: {grid: [8, 8], batch: 2, steps: 2}\n"
        "  tiny-mnist: {grid: [8, 8], batch: 2, steps: 2,\n"
        "    model: {channels: 20, alive_mask: false, hidden: [80], update_noise: 0.02},\n"
        "    layout: {inputs: 1, visible: 10, alpha: null},\n"
        "    perception: {kind: conv, features: 80, activation: relu}}\n"
        "  tiny-bf16: {grid: [8, 8], batch: 2, steps: 2, bf16: true}\n"
    )
    out = nca(
        "bench",
        "--case-file",
        str(cases),
        "--iters",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        str(tmp_path / "bench.json"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "matmul" in out.stdout and "tiny-mnist" in out.stdout  # not cut short in a pipe
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["case"] for r in rows] == ["tiny", "tiny-mnist", "tiny-bf16"]
    assert rows[0]["native"] == (native.ops() is not None)
    assert not rows[2]["native"]  # bf16 autocast runs the reference step
    for row in rows:
        for key in KEYS:
            assert key in row, key
        assert row["s_per_iter"] > 0 and row["peak_rss_mb"] > 0 and row["threads"] == 1
        assert 0 < row["fraction_of_matmul"] == pytest.approx(row["gflops"] / row["matmul_gflops"])


def test_bench_times_engines_side_by_side(tmp_path: Path) -> None:
    cases = tmp_path / "tiny.yaml"
    cases.write_text("cases:\n  tiny: {grid: [8, 8], batch: 2, steps: 2}\n")
    engines = "dense,dense-eager,reference"
    out = nca(
        "bench", "--case-file", str(cases), "--cases", "tiny", "--engine", engines,
        "--iters", "1", "--warmup", "1", "--threads", "1", "--json", str(tmp_path / "b.json"),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [(r["case"], r["engine"]) for r in rows] == [("tiny", e) for e in engines.split(",")]
    compiled = {r["engine"]: r["compile_s"] for r in rows}
    assert compiled["dense"] > 0 and compiled["dense-eager"] == compiled["reference"] == 0
    assert all(r["first_iter_s"] > 0 for r in rows)
    bad = nca("bench", "--cases", "growing", "--engine", "dense,turbo", cwd=tmp_path)
    assert bad.returncode == 2 and "'--engine': turbo" in bad.stderr


def test_bench_help_and_errors(tmp_path: Path) -> None:
    out = nca("bench", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for flag in ("--cases", "--case-file", "--iters", "--warmup", "--threads", "--json"):
        assert flag in out.stdout
    bad = nca("bench", "--cases", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown case" in bad.stderr and "growing" in bad.stderr


FAULTS_PER_ITERATION = """
import resource, sys, torch
from nca_cli.compute import keep_freed_memory
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA
from nca_cli.engine.perception import build_perception
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
layout = ChannelLayout(16, visible=4, alpha=3)
nca = NCA(layout, build_perception({"kind": "sobel"}, 16, "zeros"), [128], alive_channel=3)
x = torch.rand(4, 16, 40, 40)
def iteration():
    y, _ = nca.rollout(x, 8, torch.Generator().manual_seed(0))
    y.square().mean().backward()
iteration()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    iteration()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_kept_freed_memory_spares_the_page_faults_of_training() -> None:
    """glibc's default returns large freed blocks and faults on every reuse: thousands of
    page faults per training iteration; with freed memory kept, a small fraction.

    The default's threshold for mapping blocks afresh is fixed at its initial 128 KiB:
    glibc otherwise raises it as blocks are freed, and the count varies from 700 to 7,000
    between runs; :func:`keep_freed_memory` overrides it either way."""
    faults = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    for mode in ("default", "keep"):
        proc = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_ITERATION, mode],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        faults[mode] = int(proc.stdout.split()[-1])
    assert faults["default"] > 1000
    assert faults["keep"] < faults["default"] / 5
