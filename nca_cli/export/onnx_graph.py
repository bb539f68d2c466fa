"""The NCA step as an ONNX graph, with the fire mask (and update noise, where the model has
it) as inputs so that the graph is deterministic; and a rollout of K steps. Both are run
with onnxruntime on the same states and masks as the PyTorch reference step, and kept only
when they agree within float32 tolerance."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nca_cli.atomic import write_text_atomic
from nca_cli.engine.cascade import CascadeNCA
from nca_cli.engine.nca import NCA
from nca_cli.evaluation.runs import LoadedRun
from nca_cli.export import ExportError
from nca_cli.export.portable import GROWN, perception_kinds
from nca_cli.export.staging import staged

log = logging.getLogger(__name__)

# Perceptions whose operators ONNX Runtime cannot run, and why.
UNSUPPORTED = {
    "deformable": "its torchvision deform_conv2d exports as DeformConv, which ONNX Runtime "
    "does not run",
}
OPSET = 18
STEP_TOLERANCE = 1e-4  # max abs difference of one step's states
ROLLOUT_TOLERANCE = 1e-3  # of the K-step rollout's final states (float32 round-off grows)


class StepGraph(nn.Module):
    """``steps`` reference steps with the fire masks (``steps, B, 1, H, W``) and, where the
    model adds update noise, the noise (``steps, B, C_updated, H, W``) as inputs."""

    def __init__(self, nca: NCA, steps: int) -> None:
        super().__init__()
        self.nca, self.steps = nca, steps

    def forward(self, state: Tensor, fire: Tensor, *noise: Tensor) -> Tensor:
        for i in range(self.steps):
            state = self.nca.reference_step(state, fire[i], noise[0][i] if noise else None)
        return state


@dataclass
class OnnxExport:
    """What ``export.json`` records: the folder and files, their inputs and the check's
    figures."""

    folder: str
    step: str
    rollout: str
    rollout_steps: int
    state_shape: list[int]
    inputs: dict[str, list[int]]
    fire_rate: float
    update_noise: float
    max_abs_error_step: float
    max_abs_error_rollout: float
    opset: int
    checkpoint: str
    iteration: int


def check_exportable(loaded: LoadedRun) -> NCA:
    """The run's NCA, or an ExportError naming what ONNX cannot take."""
    if isinstance(loaded.nca, CascadeNCA):
        raise ExportError(
            "a multi-scale cascade (model.scales) is several NCAs: export one scale's run"
        )
    for kind in perception_kinds(loaded.config.get("perception", {})):
        if kind in UNSUPPORTED:
            raise ExportError(
                f"perception {kind!r} cannot be exported to ONNX: {UNSUPPORTED[kind]}"
            )
    return loaded.nca


def export_onnx(loaded: LoadedRun, out: Path, rollout_steps: int = 32, seed: int = 0) -> OnnxExport:
    """Write ``step.onnx``, ``rollout_<K>.onnx`` and ``export.json`` to ``out`` for one
    sample on the task's grid, once both graphs match the PyTorch step."""
    import onnxruntime

    if rollout_steps < 1:
        raise ExportError(f"--steps must be >= 1, not {rollout_steps}")
    nca = check_exportable(loaded).to("cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seed_state = loaded.task.fresh(1, g)["state"].float()
        state, _ = nca.rollout(seed_state, GROWN, g)  # a grown state, not just a seed
    noise = nca.draw_noise(state, rollout_steps, g)
    fire = noise.fire  # a fire rate of 1 fires every cell: the input stays, all ones
    if fire is None:
        fire = torch.ones((rollout_steps, 1, 1, *state.shape[-2:]))
    extra = [noise.update] if noise.update is not None else []
    names = ["state", "fire", *(["noise"] if extra else [])]
    with staged(out) as tmp:
        errors = {}
        for label, steps in (("step", 1), ("rollout", rollout_steps)):
            inputs = (state, fire[:steps], *(e[:steps] for e in extra))
            path = tmp / (f"rollout_{steps}.onnx" if label == "rollout" else "step.onnx")
            graph = StepGraph(nca, steps).eval()
            torch.onnx.export(
                graph,
                inputs,
                str(path),
                input_names=names,
                output_names=["next_state"],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one self-contained file
                verbose=False,
            )
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
            with torch.no_grad():
                want = graph(*inputs).numpy()
            errors[label] = float(abs(got - want).max())
        if errors["step"] > STEP_TOLERANCE or errors["rollout"] > ROLLOUT_TOLERANCE:
            raise ExportError(
                f"the ONNX graphs differ from the PyTorch step: max abs error {errors['step']:.3g} "
                f"after one step (tolerance {STEP_TOLERANCE}), {errors['rollout']:.3g} after "
                f"{rollout_steps} (tolerance {ROLLOUT_TOLERANCE})"
            )
        report = OnnxExport(
            folder=str(out),
            step="step.onnx",
            rollout=f"rollout_{rollout_steps}.onnx",
            rollout_steps=rollout_steps,
            state_shape=list(state.shape),
            inputs={
                "state": list(state.shape),
                "fire": [rollout_steps, *fire.shape[1:]],
                **({"noise": [rollout_steps, *extra[0].shape[1:]]} if extra else {}),
            },
            fire_rate=nca.fire_rate,
            update_noise=nca.update_noise,
            max_abs_error_step=errors["step"],
            max_abs_error_rollout=errors["rollout"],
            opset=OPSET,
            checkpoint=str(loaded.path),
            iteration=loaded.iteration,
        )
        write_text_atomic(tmp / "export.json", json.dumps(asdict(report), indent=2) + "\n")
    log.info("ONNX export in %s: max abs error %.3g (step), %.3g (rollout)", out, *errors.values())
    return report
