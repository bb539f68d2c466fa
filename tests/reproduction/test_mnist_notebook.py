"""experiment=mnist_notebook against the self-classifying MNIST notebook's own lines
(google-research/self-organising-systems notebooks/mnist_ca.ipynb), transcribed to numpy
and applied to the same hand-made tensors."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.engine.cascade import build_model
from nca_cli.engine.nca import NCA
from nca_cli.engine.pool import PoolConfig, renew, validate_pool
from nca_cli.tasks import task_class
from nca_cli.tasks.mnist import MNISTTask
from nca_cli.training.optim import build_optimizer
from nca_cli.training.schema import parse_run_config

NOTEBOOK = ["experiment=mnist_notebook", "logger=none"]


@pytest.fixture(scope="module")
def notebook() -> tuple[MNISTTask, dict[str, Any]]:
    """The task, loaded once (the 70k digits take seconds) from the shared data."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NCA_DATA_DIR", os.environ.get("NCA_DATA_DIR", str(shared)))
        config = compose(NOTEBOOK)
        task = task_class("mnist")(parse_run_config(config))
    assert isinstance(task, MNISTTask)
    return task, config


def to_ten_dim_label(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The notebook's target: one-hot on cells with x >= 0.1, zero elsewhere."""
    y_res = np.zeros([*list(x.shape), 10])
    y_expanded = np.broadcast_to(y, x.T.shape).T
    y_res[x >= 0.1, y_expanded[x >= 0.1]] = 1.0
    return y_res.astype(np.float32)


def test_loss_is_the_notebooks_summed_halved_l2(notebook: tuple[MNISTTask, Any]) -> None:
    task, _ = notebook
    g = torch.Generator().manual_seed(0)
    batch = task.fresh(3, g)
    state = batch["state"].clone()
    live = state[:, :1] > 0.1
    state[:, 1:] = torch.randn(state[:, 1:].shape, generator=g) * live  # dead cells hold 0
    x = state.permute(0, 2, 3, 1).numpy()  # the notebook is channels-last
    y = to_ten_dim_label(x[..., 0], batch["label"].numpy())
    ours = task.loss(state, batch).numpy()
    # individual_l2_loss: tf.reduce_sum((y - ca.classify(x))**2, [1, 2, 3]) / 2, with
    # classify(x) = x[..., -10:]; ours keeps the class channels right after the input, a
    # permutation of the 19 updated channels that the model cannot tell apart
    votes = x[..., task.layout.visible_slice]
    assert votes.shape[-1] == 10
    theirs = ((y - votes) ** 2).sum(axis=(1, 2, 3)) / 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_mutation_is_the_notebooks(notebook: tuple[MNISTTask, Any]) -> None:
    task, _ = notebook
    g = torch.Generator().manual_seed(1)
    batch = task.fresh(64, g)
    batch["state"][:, 1:] = torch.rand(batch["state"][:, 1:].shape, generator=g) + 1.0
    old = batch["state"].clone()
    out = task.mutate({k: v.clone() for k, v in batch.items()}, g)
    new_x = out["state"][:, :1]
    # each new input is a training digit, its label the new label
    train = task.images[task.train_rows]
    for i in range(len(new_x)):
        match = (train == new_x[i]).flatten(1).all(1).nonzero()
        assert len(match) >= 1
        assert int(task.labels[task.train_rows[match[0, 0]]]) == int(out["label"][i])
    # x0[-q:] = tf.concat([new_x, x0[-q:, :, :, 1:] * mutate_mask], -1), mask = new_x > 0.1
    theirs = torch.cat([new_x, old[:, 1:] * (new_x > 0.1).float()], 1)
    assert torch.equal(out["state"], theirs)
    # any digit: some keep their class (about a tenth), as np.random.randint draws them
    same = (out["label"] == batch["label"]).float().mean()
    assert 0 < same < 0.4


def test_renewal_keeps_the_random_draw_fresh_first_then_mutated() -> None:
    """Pool order random: the sampled batch is renewed in the order it was drawn (the
    notebook: rows [:4] fresh, 4 mutated, the rest as they were), without ranking."""
    cfg = PoolConfig(size=16, replace=2, mutate=2, order="random")
    state = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 2, 2, 2).clone()
    batch = {"state": state, "label": torch.arange(8)}

    def fresh(n: int) -> dict[str, torch.Tensor]:
        return {"state": torch.full((n, 2, 2, 2), -1.0), "label": torch.full((n,), -1)}

    def mutate(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"state": part["state"] + 100, "label": part["label"] + 100}

    out = renew({k: v.clone() for k, v in batch.items()}, None, cfg, fresh, mutate, 1, None)
    assert out["label"].tolist() == [-1, -1, 102, 103, 4, 5, 6, 7]
    assert torch.equal(out["state"][4:], state[4:])
    with pytest.raises(ConfigError, match=r"'task.pool.order': 'worst'"):
        validate_pool(PoolConfig(size=16, order="worst"), 8, "task.pool")


def test_initialisation_is_keras_glorot_uniform_with_zero_biases(
    notebook: tuple[MNISTTask, Any],
) -> None:
    task, config = notebook
    run = parse_run_config(config)
    torch.manual_seed(0)
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
    assert isinstance(nca, NCA)
    assert sum(p.numel() for p in nca.parameters()) == 22499
    conv = nca.perception.conv  # type: ignore[union-attr]
    first, last = nca.update.layers[0], nca.update.layers[-1]
    # Keras Conv2D: fan_in = k*k*in, fan_out = k*k*out; limit sqrt(6 / (fan_in + fan_out))
    for param, fan_in, fan_out in ((conv.weight, 9 * 20, 9 * 80), (first.weight, 80, 80)):
        weight = param.detach()
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert float(weight.abs().max()) <= limit
        assert float(weight.abs().max()) > 0.95 * limit
        assert abs(float(weight.std()) - limit / math.sqrt(3)) < 0.05 * limit
    assert not conv.bias.any() and not first.bias.any()
    assert not last.weight.any() and not last.bias.any()  # zeros_initializer


def test_optimiser_and_gradients_are_the_notebooks(notebook: tuple[MNISTTask, Any]) -> None:
    _, config = notebook
    t = parse_run_config(config).trainer
    assert t.grad.normalize and t.grad.clip_norm is None  # g / (||g|| + 1e-8) per tensor
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], t.optimizer)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["eps"] == 1e-7 and opt.defaults["lr"] == 1e-3  # Keras's Adam
    assert (t.schedule.name, t.schedule.milestones, t.schedule.gamma) == (
        "piecewise",
        [30000, 70000],
        0.1,
    )
    assert (t.batch_size, t.steps.min, t.steps.max, t.iterations) == (16, 20, 20, 100000)
    pool = config["task"]["pool"]
    assert (pool["size"], pool["replace"], pool["mutate"], pool["order"]) == (160, 4, 4, "random")


def test_evaluation_pools_the_cells_of_every_test_digit(notebook: tuple[MNISTTask, Any]) -> None:
    task, _ = notebook
    assert task.config.evaluation.average == "cells" and task.eval_limit == 0
    assert len(task.rows["test"]) == 10000 and len(task.rows["train"]) == 60000

    rows = [r for r in task.rows["test"] if int(task.labels[r]) in (3, 7)][:6]
    task_rows = task.rows["test"]
    task.rows["test"] = rows
    try:
        # votes: always class 3, so a digit's accuracy is 1 for threes and 0 otherwise
        def rollout(state: torch.Tensor, steps: int) -> torch.Tensor:
            state = state.clone()
            state[:, task.layout.visible_slice.start + 3] = 1.0
            return state

        digits = task.batch_of(rows)
        ink = (digits["state"][:, 0] > 0.1).flatten(1).sum(1).float()
        threes = (digits["label"] == 3).float()
        figures = task.evaluate(rollout, "test", 4, 30)
    finally:
        task.rows["test"] = task_rows
    expected = float((ink * threes).sum() / ink.sum())
    assert 0 < expected != pytest.approx(float(threes.mean()))  # not the mean over digits
    assert figures["accuracy_20_30"] == pytest.approx(expected)


def test_a_training_rollout_is_the_notebooks_tensorflow_code(
    notebook: tuple[MNISTTask, Any], tmp_path: Path
) -> None:
    """Our step, loss and gradients against the notebook's own Keras model on the same
    weights, digits and noise, every cell firing (float64; the randomness of the two
    frameworks differs, the mathematics must not). Runs where TensorFlow is installed here
    or in the Python that NCA_ORIGINAL_PYTHON names (pip install 'nca-cli[original]')."""
    from nca_cli.reproduction.runner import ORIGINAL_DIR, original_python
    from nca_cli.reproduction.spec import load

    exe, why = original_python(load("mnist-notebook"), os.environ.get("NCA_ORIGINAL_PYTHON"))
    if exe is None:
        pytest.skip(f"the notebook's own code is {why} (NCA_ORIGINAL_PYTHON=PATH)")
    task, config = notebook
    run = parse_run_config(config)
    torch.manual_seed(0)
    nca = build_model(run.model, run.perception, task.layout, task.alive_channel).double()
    assert isinstance(nca, NCA)
    conv = nca.perception.conv  # type: ignore[union-attr]
    first, last = nca.update.layers
    with torch.no_grad():  # a last layer that is not zero, so that every weight has a gradient
        last.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    batch = task.batch_of(list(range(8)))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn((20, 8, 19, 28, 28), generator=g, dtype=torch.float64) * 0.02
    # The notebook's channels: grey, 9 hidden, 10 class votes; ours: grey, votes, hidden.
    perm = [0, *range(11, 20), *range(1, 11)]  # its channel i is our perm[i]
    out = [p - 1 for p in perm[1:]]

    ours = [conv.weight, conv.bias, first.weight, first.bias, last.weight, last.bias]
    kinds = ["conv", "bias", "dense", "bias", "last", "last bias"]

    def tf_layout(w: torch.Tensor, kind: str) -> np.ndarray:
        """A weight (or its gradient) as the Keras layer holds it, channels in its order."""
        w = w.detach()
        layouts = {
            "conv": lambda: w[:, perm].permute(2, 3, 1, 0),
            "bias": lambda: w,
            "dense": lambda: w.t()[None, None],
            "last": lambda: w.t()[:, out][None, None],
            "last bias": lambda: w[out],
        }
        return layouts[kind]().numpy()

    names = ["k0", "b0", "k1", "b1", "k2", "b2"]
    np.savez(
        tmp_path / "in.npz",
        x=batch["state"].double()[:, perm].permute(0, 2, 3, 1).numpy(),
        y=torch.nn.functional.one_hot(batch["label"], 10).double().numpy(),
        noise=noise[:, :, out].permute(0, 1, 3, 4, 2).numpy(),
        **{n: tf_layout(w, k) for n, w, k in zip(names, ours, kinds, strict=True)},
    )
    script = ORIGINAL_DIR / "mnist_notebook_rollout.py"
    done = subprocess.run(
        [exe, str(script), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = np.load(tmp_path / "out.npz")

    x = batch["state"].double()
    for i in range(20):
        x = nca.step(x, None, noise[i])
    loss = task.loss(x, batch).mean()
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(theirs["loss"]), rel=1e-6)
    np.testing.assert_allclose(x[:, perm].permute(0, 2, 3, 1).detach().numpy(), theirs["x"],
                               atol=1e-9)  # fmt: skip
    for i, (w, kind) in enumerate(zip(ours, kinds, strict=True)):
        assert w.grad is not None
        mine, expected = tf_layout(w.grad, kind), theirs[f"g{i}"]
        np.testing.assert_allclose(mine, expected, atol=1e-5 * np.abs(expected).max())
