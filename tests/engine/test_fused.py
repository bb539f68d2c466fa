"""The fused NCA step against the plain reference step: same values, same gradients."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.engine import native
from nca_cli.engine.fused import SavedArena, StepPlan, _chunk_pool, _dilate, block_rows
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.nca import NCA, build_nca
from nca_cli.engine.perception import build_perception, max3x3, pad
from nca_cli.engine.schema import ModelConfig
from nca_cli.engine.shards import batch_shards, run_shards

CONV3 = {"kind": "conv", "kernel_size": 3}
PERCEPTIONS: dict[str, dict[str, Any]] = {
    "sobel": {"kind": "sobel"},
    "sobel-laplacian": {"kind": "sobel", "laplacian": True},
    "conv": CONV3,
    "dilated": {
        "kind": "multi",
        "components": [CONV3, {"kind": "conv", "kernel_size": 5, "dilation": 2}],
    },
    "multi": {"kind": "multi", "components": [{"kind": "sobel", "laplacian": True}, CONV3]},
    "residual": {"kind": "residual", "kernel_size": 3, "depthwise": True, "features": 16},
    "attention": {"kind": "attention", "heads": 2, "head_dim": 4},
    "deformable": {"kind": "deformable"},
}


def make_nca(
    perception: dict[str, Any],
    *,
    fire_rate: float = 0.5,
    alive: bool = True,
    fixed: int = 0,
    **model: Any,
) -> NCA:
    layout = ChannelLayout(8, inputs=fixed, visible=4, alpha=3)
    cfg = ModelConfig(
        hidden=model.pop("hidden", [32]),
        fire_rate=fire_rate,
        alive_mask=alive,
        zero_init=False,
        **model,
    )
    torch.manual_seed(0)
    return build_nca(cfg, perception, layout, layout.alpha_channel).double()


def state(batch: int = 2, height: int = 9, width: int = 7, dead: float = 0.6) -> Tensor:
    """A random state in which a ``dead`` fraction of cells has alpha 0."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand((batch, 8, height, width), generator=g, dtype=torch.float64) - 0.2
    alpha = x[:, 3]
    alpha[torch.rand(alpha.shape, generator=g, dtype=torch.float64) < dead] = 0.0
    return x


def run(
    nca: NCA, x0: Tensor, steps: int, fast: bool, grad_x: bool = True, **rollout: Any
) -> tuple[Tensor, ...]:
    """Final state, the gradient of a fixed random functional of it wrt x0 (if ``grad_x``)
    and every parameter."""
    nca.engine = "fused" if fast else "reference"
    nca.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_(grad_x)
    final, _ = nca.rollout(x, steps, torch.Generator().manual_seed(2), **rollout)
    weights = torch.randn(final.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    (final * weights).sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in nca.parameters()]
    assert (x.grad is not None) == grad_x
    return (final.detach(), *([x.grad] if x.grad is not None else []), *grads)


def assert_same(a: tuple[Tensor, ...], b: tuple[Tensor, ...], **tol: float) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(u, v, msg=lambda m, i=i: f"tensor {i}: {m}", **tol)


# Tests of the native operators themselves: where a C++ compiler is, they must build.
needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")


@pytest.fixture(params=["native", "tensor ops"])
def operators(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fused step with its native (C++) operators, or with tensor operations only, as
    where no compiler is found."""
    if request.param == "tensor ops":
        monkeypatch.setenv("NCA_NATIVE", "0")
        assert native.ops() is None
    elif native.ops() is None:
        pytest.skip("no C++ compiler: the native operators cannot be built")
    return str(request.param)


@pytest.mark.parametrize("alive", [True, False])
@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
@pytest.mark.parametrize("perception", list(PERCEPTIONS))
def test_fast_step_matches_reference(
    perception: str, fire_rate: float, alive: bool, operators: str
) -> None:
    nca = make_nca(PERCEPTIONS[perception], fire_rate=fire_rate, alive=alive)
    x0 = state()
    assert_same(run(nca, x0, 4, fast=True), run(nca, x0, 4, fast=False))


@pytest.mark.parametrize(
    ("perception", "options"),
    [
        ("sobel", {"fixed": 2, "update_noise": 0.1}),
        ("conv", {"padding": "circular"}),
        ("multi", {"padding": "reflect", "activation": "tanh", "hidden": [16, 12]}),
        ("sobel", {"fixed": 1, "padding": "replicate", "activation": "silu", "fire_rate": 1.0}),
        ("residual", {"fixed": 3, "alive": False, "update_noise": 0.05}),
    ],
)
def test_fast_step_matches_reference_with_options(perception: str, options: dict[str, Any]) -> None:
    nca = make_nca(PERCEPTIONS[perception], **options)
    x0 = state()
    assert_same(run(nca, x0, 4, fast=True), run(nca, x0, 4, fast=False))


@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
def test_circular_sobel_takes_the_hand_written_adjoint_and_matches_reference(
    fire_rate: float, operators: str
) -> None:
    """A grid that wraps around (the NCA review's recipes): the Sobel perception's fast
    path, natively and with tensor operations, with the reference's values and gradients;
    a small grid, so that many cells sit on the border."""
    nca = make_nca(PERCEPTIONS["sobel"], padding="circular", fire_rate=fire_rate)
    assert StepPlan(nca, recompute=True).perm is not None
    x0 = state(height=5, width=6, dead=0.2)
    assert_same(run(nca, x0, 4, fast=True), run(nca, x0, 4, fast=False))
    assert_same(run(nca, x0, 3, True, grad_x=False), run(nca, x0, 3, False, grad_x=False))


@pytest.mark.parametrize("fixed", [0, 1])
@pytest.mark.parametrize("perception", ["sobel", "conv", "dilated"])
def test_fast_step_matches_reference_without_alive_pooling(perception: str, fixed: int) -> None:
    """``alive_pool`` false (self-classifying MNIST): a cell is alive by its own value, so
    the fused step's reach around the alive mask is the cell itself."""
    nca = make_nca(PERCEPTIONS[perception], fixed=fixed, alive_pool=False, update_noise=0.02)
    assert not nca.alive_pool
    x0 = state(height=12, width=10, dead=0.5)
    assert nca.alive_channel is not None
    a = x0[:, nca.alive_channel : nca.alive_channel + 1]
    alive = nca.alive(x0)
    assert torch.equal(alive, a > 0.1)
    assert (alive != (max3x3(pad(a, 1, "zeros")) > 0.1)).any()  # differs from pooling
    assert torch.equal(_dilate(nca, alive), alive)  # the MLP runs on living cells only
    assert_same(run(nca, x0, 4, fast=True), run(nca, x0, 4, fast=False))
    assert_same(run(nca, x0, 3, True, grad_x=False), run(nca, x0, 3, False, grad_x=False))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("perception", ["sobel", "conv", "residual"])
def test_parameter_gradients_match_when_the_seed_needs_none(perception: str, padding: str) -> None:
    """As in training: the first state needs no gradient, only the parameters do."""
    nca = make_nca(PERCEPTIONS[perception], padding=padding)
    x0 = state()
    assert_same(run(nca, x0, 3, True, grad_x=False), run(nca, x0, 3, False, grad_x=False))


def test_fast_step_matches_reference_in_float32_and_shares_draw_noise() -> None:
    nca = make_nca(PERCEPTIONS["sobel"], update_noise=0.02).float()
    x = state(batch=3, height=12, width=10).float().contiguous(memory_format=torch.channels_last)
    noise = nca.draw_noise(x, 3, torch.Generator().manual_seed(5))
    assert noise.fire is not None and noise.update is not None
    outs = []
    for step in (nca.step, nca.reference_step):
        y = x
        with torch.no_grad():
            for i in range(3):
                y = step(y, noise.fire[i], noise.update[i])
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert_same(run(nca, x, 6, fast=True), run(nca, x, 6, fast=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
def test_blocks_of_rows_match_reference(fire_rate: float, operators: str) -> None:
    """A grid large enough that the MLP runs in several blocks of rows."""
    nca = make_nca(PERCEPTIONS["sobel"], fire_rate=fire_rate, hidden=[512])
    x0 = state(batch=2, height=26, width=26, dead=0.0)
    assert block_rows(nca) == 512 and x0[:, 0].numel() * fire_rate > 1.2 * 512
    assert_same(run(nca, x0, 2, fast=True), run(nca, x0, 2, fast=False))


@needs_compiler
def test_native_operators_match_tensor_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a compiler is, the step runs natively (the MLP in several blocks, the Sobel
    perception at the selected rows), with the values and gradients of the tensor
    operations, also with frozen parameters (no gradient buffers)."""
    nca = make_nca(PERCEPTIONS["sobel"], hidden=[512, 64])
    plan = StepPlan(nca, recompute=True)
    assert plan.native_mlp is not None and plan.native_sobel is not None
    nca.update.layers[0].bias.requires_grad_(False)
    nca.update.layers[2].weight.requires_grad_(False)
    x0 = state(batch=2, height=36, width=36, dead=0.1)
    assert x0[:, 0].numel() * 0.5 > 2 * block_rows(nca)
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("NCA_NATIVE", setting)
        results.append(run(nca, x0, 3, fast=True) + run(nca, x0, 2, True, grad_x=False))
    assert_same(results[0], results[1], rtol=1e-12, atol=1e-12)
    frozen_bias, frozen_weight = results[0][-5], results[0][-2]  # of [W0, b0, W1, b1, W2, b2]
    assert not frozen_bias.any() and not frozen_weight.any() and results[0][-1].any()


@needs_compiler
def test_native_operators_serve_float32_and_float64_only() -> None:
    nca = make_nca(PERCEPTIONS["sobel"])
    for dtype, served in ((torch.float64, True), (torch.float32, True), (torch.bfloat16, False)):
        plan = StepPlan(nca.to(dtype), recompute=True)
        assert (plan.native_mlp is not None) == served
        assert (plan.native_sobel is not None) == (plan.native_alive is not None) == served


@needs_compiler
@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [5, 6, 12, 16, 20, 24, 32, 48])
def test_native_sobel_matches_convolutions_for_any_channel_count(
    channels: int, dtype: torch.dtype, padding: str
) -> None:
    """The native Sobel rows are depthwise correlations (zero or circular padding) at the
    selected cells, and their adjoint is autograd's gradient, for channel counts that take
    every vector width of the kernels (1 to 16 values, fixed or read at run time)."""
    ops = native.ops()
    assert ops is not None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 7, 9, generator=g, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    taps = torch.randn(2, 9, channels, generator=g, dtype=dtype)
    idx = torch.randperm(x[:, 0].numel(), generator=g)[:50].sort().values
    kernels = [t.t().reshape(channels, 1, 3, 3) for t in taps]
    padded = F.pad(x, (1, 1, 1, 1), mode="circular" if padding == "circular" else "constant")
    convolved = (F.conv2d(padded, k, groups=channels) for k in kernels)
    features = torch.cat([x, *convolved], 1)
    expected = features.permute(0, 2, 3, 1).reshape(-1, 3 * channels)[idx]
    out = torch.empty_like(expected)
    circular = padding == "circular"
    ops.sobel_rows(x.detach(), taps, idx, circular, out)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, expected.detach(), **tol)

    grad_rows = torch.randn(expected.shape, generator=g, dtype=dtype)
    (expected * grad_rows).sum().backward()
    grad_x = torch.zeros_like(x).contiguous(memory_format=torch.channels_last)
    ops.sobel_adjoint(grad_rows, taps, idx, circular, grad_x)
    torch.testing.assert_close(grad_x, x.grad, **tol)


def test_without_a_compiler_the_step_runs_tensor_operations(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.utils import cpp_extension

    def no_compiler(**_: Any) -> None:
        raise RuntimeError("Error building extension 'nca_native': c++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert native.ops() is None
            nca = make_nca(PERCEPTIONS["sobel"])
            assert StepPlan(nca, recompute=True).native_mlp is None
            x0 = state()
            assert_same(run(nca, x0, 3, fast=True), run(nca, x0, 3, fast=False))
    finally:
        native._load.cache_clear()
    assert "using tensor operations" in caplog.text and "c++: not found" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("padding", ["zeros", "circular", "reflect", "replicate"])
def test_native_alive_selection_matches_tensor_operations(
    padding: str, pool: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alive map, selected rows, positions and dying rows, exactly, with alpha values at
    the threshold (compared in the state's type), NaN and living cells at the borders."""
    if native.ops() is None:
        pytest.skip("no C++ compiler: the native operators cannot be built")
    nca = make_nca(PERCEPTIONS["sobel"], padding=padding, alive_pool=pool).to(dtype)
    x = state(batch=3, height=11, width=8, dead=0.7).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    alpha = x[:, 3]
    alpha[0, 0, 0], alpha[0, 5, 7], alpha[1, 10, 3] = 0.1, 0.35, float("nan")
    alpha[2, 4, :] = torch.tensor(0.1, dtype=dtype).nextafter(torch.tensor(1.0, dtype=dtype))
    y = x + 0.15 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    fire = torch.rand((3, 1, 11, 8), generator=torch.Generator().manual_seed(5)) < 0.5
    plans = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("NCA_NATIVE", setting)
        plans[setting] = StepPlan(nca, recompute=True)
    assert plans["1"].native_alive is not None and plans["0"].native_alive is None
    for f in (fire, None):
        got, want = plans["1"]._select(x, f), plans["0"]._select(x, f)
        assert got[1] is not None and want[1] is not None and got[1].numel() < x[:, 0].numel()
        for a, b in zip(got, want, strict=True):
            assert a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b)
    pre, ops = nca.alive(x), plans["1"].native_alive
    dead = ops.dead_rows(pre, y, *plans["1"].alive_args)
    assert dead.numel() > 0 and torch.equal(
        dead, (~(pre & nca.alive(y))).reshape(-1).nonzero()[:, 0]
    )


def test_dead_regions_stay_dead_and_untouched() -> None:
    """The fused step skips cells far from life; they must still come out as zeros."""
    nca = make_nca(PERCEPTIONS["sobel"], fire_rate=1.0)
    x = state(height=16, width=16, dead=0.0)
    x[..., :, 8:] = 0.0  # the right half dead, and two columns beyond the alive mask's reach
    with torch.no_grad():
        fast, ref = nca.step(x), nca.reference_step(x)
    torch.testing.assert_close(fast, ref)
    assert (fast[..., 10:] == 0).all()


def test_gradient_checkpointing_changes_no_gradient() -> None:
    nca = make_nca(PERCEPTIONS["dilated"], update_noise=0.01)
    x0 = state()
    plain = run(nca, x0, 7, fast=True)
    for block in (2, 3, 7):
        assert_same(run(nca, x0, 7, fast=True, checkpoint_every=block), plain, rtol=0, atol=0)
    assert_same(run(nca, x0, 7, fast=False, checkpoint_every=3), plain)


@pytest.mark.parametrize("padding", ["zeros", "circular", "reflect", "replicate"])
@pytest.mark.parametrize("perception", ["sobel-laplacian", "conv", "dilated", "multi", "residual"])
def test_perception_at_cells_is_the_grid_perception_at_those_cells(
    perception: str, padding: str
) -> None:
    """The fused step perceives only the cells whose update it uses (corners, borders and
    the second grid here): the same features as the whole grid's at those cells."""
    p = build_perception(PERCEPTIONS[perception], 8, padding).double()
    x = state()
    grid = p(x).permute(0, 2, 3, 1).reshape(-1, p.out_features)
    cells = torch.tensor([0, 6, 31, 62, 63, 100, 125])
    at_cells = p.at_cells(x, cells)
    assert at_cells is not None
    torch.testing.assert_close(at_cells, grid[cells])
    torch.testing.assert_close(p.at_cells(x, torch.arange(len(grid))), grid)


@pytest.mark.parametrize(
    ("perception", "options"),
    [
        ("conv", {}),
        ("conv", {"padding": "circular", "update_noise": 0.1}),
        ("dilated", {"padding": "reflect"}),
        ("multi", {"fire_rate": 1.0}),
        ("residual", {"alive_pool": False}),
    ],
)
def test_few_living_cells_are_perceived_at_their_cells_with_the_reference_values(
    perception: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where few cells can live, the fused step gathers their neighbourhoods instead of
    convolving the grid: the reference step's states and gradients all the same."""
    nca = make_nca(PERCEPTIONS[perception], **options)
    perceive = type(nca.perception)
    at_cells = perceive.at_cells
    calls: list[int] = []

    def counted(self: Any, x: Tensor, cells: Tensor) -> Tensor | None:
        calls.append(len(cells))
        return at_cells(self, x, cells)

    monkeypatch.setattr(perceive, "at_cells", counted)
    x0 = state(dead=0.98)
    assert_same(run(nca, x0, 4, fast=True), run(nca, x0, 4, fast=False))
    assert calls, "the fused step perceived the whole grid"


def test_a_perception_without_cell_features_is_perceived_on_the_grid() -> None:
    """Attention has no per-cell form: the fused step perceives the whole grid, and a
    combination that holds it does too."""
    attention = build_perception(PERCEPTIONS["attention"], 8, "zeros")
    both = build_perception(
        {"kind": "multi", "components": [CONV3, PERCEPTIONS["attention"]]}, 8, "zeros"
    )
    x = state().float()
    cells = torch.arange(5)
    assert attention.at_cells(x, cells) is None and both.at_cells(x, cells) is None
    nca = make_nca({"kind": "multi", "components": [CONV3, PERCEPTIONS["attention"]]})
    assert_same(run(nca, state(), 3, fast=True), run(nca, state(), 3, fast=False))


def test_fused_step_stores_the_selected_feature_rows_only() -> None:
    """The backward pass keeps the selected feature rows (three features per channel, about
    half the cells firing: 1.5 states), the selected rows and the dead cells: no hidden
    activations; all in one arena chunk per batch shard."""
    nca = make_nca(PERCEPTIONS["sobel"], hidden=[128]).float()
    x = state(batch=4, height=32, width=32, dead=0.0).float().requires_grad_()
    kept: list[int] = []
    storages: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        kept.append(t.numel() * t.element_size())
        if t.numel():
            storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _final, _ = nca.rollout(x, 8, torch.Generator().manual_seed(0))
    state_bytes = x.numel() * x.element_size()
    assert sum(kept) < 8 * 1.8 * state_bytes
    # Per step: feature rows, selected rows, dead cells, and the cells' positions among the
    # selected rows, which the native Sobel adjoint does without.
    per_step = 3 if StepPlan(nca, recompute=True).native_sobel is not None else 4
    assert len(kept) == 8 * per_step * len(batch_shards(x))
    assert len(storages) == len(batch_shards(x))
    nca.engine = "reference"  # the reference keeps the features and hidden activations: 10x more
    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _final, _ = nca.rollout(x, 8, torch.Generator().manual_seed(0))
    assert sum(kept) > 8 * 5 * state_bytes


def test_saved_arena_hands_out_aligned_pieces_of_large_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SavedArena, "CHUNK", 256)
    arena = SavedArena(torch.device("cpu"))
    a, b = torch.arange(7), torch.arange(5, dtype=torch.int32)
    originals = [b, a, b[:0], a.view(7, 1)[1:], torch.arange(40)]
    assert arena.keep(None) is None
    pieces = [arena.keep(t) for t in originals]
    for original, copy in zip(originals, pieces, strict=True):
        assert copy is not None
        assert copy.dtype == original.dtype and copy.shape == original.shape
        assert torch.equal(copy, original) and copy.data_ptr() % SavedArena.ALIGN == 0
    chunks = [t.untyped_storage().data_ptr() for t in pieces if t is not None]
    assert len(set(chunks[:4])) == 1  # 64 + 64 + 0 + 48 bytes share one 256-byte chunk
    assert pieces[4] is not None and pieces[4].untyped_storage().nbytes() == 320  # own chunk
    assert chunks[4] != chunks[0]
    a.zero_()
    assert pieces[1] is not None and torch.equal(pieces[1], torch.arange(7))  # a copy
    state = arena.empty((2, 3), torch.float64)
    assert state.is_contiguous() and state.untyped_storage().data_ptr() != chunks[4]


def test_saved_chunks_are_reused_only_once_no_graph_needs_them(
    threads: Callable[[int], None],
) -> None:
    """A graph kept for a second backward pass keeps its chunks while other rollouts run;
    once it is freed, the next rollouts reuse the pool's chunks instead of new ones."""
    threads(2)
    nca = make_nca(PERCEPTIONS["sobel"]).float()
    x = state(batch=4, height=12, width=12, dead=0.0).float()
    params = list(nca.parameters())
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))

    def loss(scale: float) -> Tensor:
        final, _ = nca.rollout(x * scale, 4, torch.Generator().manual_seed(4))
        return (final * weights).sum()

    kept = loss(1.0)
    first = torch.autograd.grad(kept, params, retain_graph=True)
    for scale in (0.5, 2.0):  # other graphs, built and freed while `kept` lives
        torch.autograd.grad(loss(scale), params)
    assert_same(torch.autograd.grad(kept, params), first, rtol=0, atol=0)
    del kept
    pool = _chunk_pool(os.getpid())
    chunks = len(pool.chunks)
    for scale in (0.5, 2.0, 1.0):
        torch.autograd.grad(loss(scale), params)
    assert len(pool.chunks) == chunks


def test_bf16_autocast_falls_back_to_the_reference_step() -> None:
    nca = make_nca(PERCEPTIONS["sobel"]).float()
    x = state().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = nca.rollout(x.requires_grad_(), 3, torch.Generator().manual_seed(0))
        loss = out.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_depthwise_perception_matches_a_grouped_convolution(padding: str) -> None:
    """The repeated-channel trick gives the grouped convolution's features, in any layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7)
    p = build_perception({"kind": "conv", "depthwise": True, "features": 15}, 5, padding)
    conv = p.conv  # type: ignore[attr-defined]
    xp = F.pad(x, (1, 1, 1, 1), mode="constant" if padding == "zeros" else padding)
    expected = F.conv2d(xp, conv.weight, conv.bias, groups=5)
    torch.testing.assert_close(p(x), expected)
    torch.testing.assert_close(p(x.contiguous(memory_format=torch.channels_last)), expected)


@pytest.fixture
def threads() -> Iterator[Callable[[int], None]]:
    """Set torch's intra-op thread count for a test; restored after it."""
    own = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(own)


@pytest.mark.parametrize("perception", ["sobel", "residual"])
def test_batch_shards_on_threads_match_one_thread(
    perception: str, threads: Callable[[int], None]
) -> None:
    """Uneven shards (5 items on 3 threads) give the one-thread values, trajectory and
    gradients, and the reference's."""
    nca = make_nca(PERCEPTIONS[perception], update_noise=0.01)
    x0 = state(batch=5, height=10, width=9)
    results = []
    for n in (1, 3):
        threads(n)
        assert len(batch_shards(x0)) == n
        with torch.no_grad():
            _, states = nca.rollout(x0, 4, torch.Generator().manual_seed(2), trajectory=True)
        results.append((run(nca, x0, 4, fast=True), states))
    (one, one_states), (sharded, sharded_states) = results
    assert_same(sharded, one)
    assert_same(tuple(sharded_states), tuple(one_states))
    assert sharded_states[-1].shape == x0.shape
    assert_same(sharded, run(nca, x0, 4, fast=False))


def test_shard_workers_split_the_threads_and_leave_the_callers(
    threads: Callable[[int], None],
) -> None:
    x = torch.zeros(2, 1, 1, 1)
    threads(4)
    counts = run_shards(lambda _: torch.get_num_threads(), batch_shards(x))
    assert counts == [2, 2]
    assert torch.get_num_threads() == 4
    threads(2)
    assert batch_shards(torch.zeros(8, 1, 1, 1)) == [slice(0, 4), slice(4, 8)]
    assert run_shards(lambda _: torch.get_num_threads(), batch_shards(x)) == [1, 1]
    assert torch.get_num_threads() == 2


def test_an_error_in_a_shard_reaches_the_caller(threads: Callable[[int], None]) -> None:
    threads(2)

    def fail(shard: slice) -> None:
        raise ValueError(f"shard {shard.start}")

    with pytest.raises(ValueError, match="shard"):
        run_shards(fail, batch_shards(torch.zeros(2, 1, 1, 1)))


def _shard_counts_in_child(queue: Any) -> None:
    queue.put(run_shards(lambda _: torch.get_num_threads(), batch_shards(torch.zeros(2, 1))))


def test_a_forked_child_runs_shards_on_threads_of_its_own(threads: Callable[[int], None]) -> None:
    """A forked process has none of its parent's pool threads: it must start its own, not
    wait forever for the parent's."""
    threads(2)
    assert run_shards(lambda _: torch.get_num_threads(), batch_shards(torch.zeros(2, 1))) == [1, 1]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_shard_counts_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1, 1]
