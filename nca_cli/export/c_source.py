"""The NCA step as dependency-free C99: ``nca.c`` and ``nca.h`` (the step, the same for every
model), ``nca_model.h`` (this model's sizes and weights, float32 or int8 with a float scale
per output row), ``nca_seed.h`` and ``example.c`` (grows the seed and prints it). The step is
compiled with the system's C compiler and run beside the PyTorch step on the same states and
fire masks; the files are kept only when they agree."""

from __future__ import annotations

import copy
import ctypes
import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nca_cli.atomic import write_text_atomic
from nca_cli.engine.nca import NCA
from nca_cli.evaluation.runs import LoadedRun
from nca_cli.export import ExportError
from nca_cli.export.portable import (
    GROWN,
    Convolution,
    Layer,
    PortableNCA,
    portable,
    seed_entries,
)
from nca_cli.export.staging import staged

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "int8")
TOLERANCE = 1e-3  # max abs difference of the states over the compared steps (float32)
SOURCES = ("nca.c", "nca.h", "example.c")
ACTIVATION_CODES = {
    None: 0,
    "relu": 1,
    "gelu": 2,
    "silu": 3,
    "tanh": 4,
    "elu": 5,
    "leaky_relu": 6,
    "leaky_relu_0.2": 7,
}
PADDING_CODES = {"zeros": 0, "circular": 1, "reflect": 2}
FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]


@dataclass
class CExport:
    """What ``export.json`` records: the files, the memory they need and the check."""

    folder: str
    files: list[str]
    quantization: str
    grid: list[int]  # height, width, channels
    weight_bytes: int
    state_bytes: int  # one state; a step reads one and writes another
    scratch_bytes: int
    compared_steps: int
    max_abs_error: float | None  # the C step against the PyTorch step it ports; None unchecked
    max_abs_error_float: float | None  # int8 only: against the float32 model
    compiler: str | None
    checkpoint: str
    iteration: int


@dataclass
class _Table:
    """One weight table as C: float values, or int8 values with a scale per output row."""

    name: str
    values: np.ndarray  # float32, or int8 when quantised
    scale: np.ndarray | None

    @property
    def bytes(self) -> int:
        return self.values.nbytes + (0 if self.scale is None else self.scale.nbytes)


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output row (the first axis): ``weight ~ q * scale[row]``."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = np.abs(rows).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weight.shape), scale.astype(np.float32)


def export_c(
    loaded: LoadedRun, out: Path, steps: int = 64, quantization: str = "float32", seed: int = 0
) -> CExport:
    """Write the C files for one sample on the task's grid to ``out``, once the compiled
    step matches the PyTorch step for ``steps`` steps (with int8, the PyTorch step with the
    same rounded weights; the drift from the float model is reported beside it)."""
    if quantization not in QUANTIZATIONS:
        known = ", ".join(QUANTIZATIONS)
        raise ExportError(f"--quantize {quantization!r}: expected one of {known}")
    if steps < 1:
        raise ExportError(f"--steps must be >= 1, not {steps}")
    float_nca = loaded.nca.to("cpu").eval()
    nca = copy.deepcopy(float_nca)  # int8: its weights become the rounded ones
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seed_state = loaded.task.fresh(1, g)["state"].float()
    model = portable(nca, loaded.config, tuple(seed_state.shape[-2:]), "c")
    tables = _tables(model, quantization)
    assert isinstance(nca, NCA)
    with staged(out) as folder:
        for name in SOURCES:
            text = resources.files("nca_cli.export").joinpath("c", name).read_text()
            (folder / name).write_text(text)
        (folder / "nca_model.h").write_text(_model_header(model, tables))
        (folder / "nca_seed.h").write_text(_seed_header(seed_state, steps))
        compiler = shutil.which(os.environ.get("CC", "cc"))
        errors: tuple[float, float | None] | tuple[None, None] = (None, None)
        if compiler is None:
            log.warning("no C compiler (cc, or $CC) on PATH: the C step is written unchecked")
        else:
            original = float_nca if quantization == "int8" else None
            errors = _check(folder, compiler, nca, original, seed_state, steps, g)
            if errors[0] > TOLERANCE:
                raise ExportError(
                    f"the C step differs from the PyTorch step: max abs error {errors[0]:.3g} "
                    f"over {steps} steps (tolerance {TOLERANCE})"
                )
        report = CExport(
            folder=str(out),
            files=[*SOURCES, "nca_model.h", "nca_seed.h"],
            quantization=quantization,
            grid=[model.height, model.width, model.channels],
            weight_bytes=_weight_bytes(model, tables),
            state_bytes=4 * model.height * model.width * model.channels,
            scratch_bytes=_scratch_bytes(model),
            compared_steps=steps,
            max_abs_error=errors[0],
            max_abs_error_float=errors[1] if quantization == "int8" else None,
            compiler=compiler,
            checkpoint=str(loaded.path),
            iteration=loaded.iteration,
        )
        write_text_atomic(folder / "export.json", json.dumps(asdict(report), indent=2) + "\n")
        for built in (folder / "libnca_check.so", folder / "example"):
            built.unlink(missing_ok=True)
    return report


def _tables(model: PortableNCA, quantization: str) -> list[_Table]:
    """The weight tables in the order the header lists them: convolutions, then layers.
    Quantising writes the rounded weights back into the model's parameters, so that the
    PyTorch step the check runs is the one the C step ports."""
    tables = []
    parts: list[Convolution | Layer] = [*model.convolutions, *model.layers]
    for i, part in enumerate(parts):
        weight, parameter = part.weight, part.parameter
        name = f"nca_weight_{i}"
        if quantization == "int8" and parameter is not None:
            q, scale = quantize(weight)
            rounded = q.astype(np.float32) * scale.reshape(-1, *[1] * (weight.ndim - 1))
            with torch.no_grad():
                parameter.copy_(torch.from_numpy(rounded).view_as(parameter))
            tables.append(_Table(name, q, scale))
        else:
            tables.append(_Table(name, weight.astype(np.float32), None))
    return tables


def _weight_bytes(model: PortableNCA, tables: list[_Table]) -> int:
    """What the header's weight tables and biases take."""
    return sum(t.bytes for t in tables) + model.bias_bytes


def _max_width(model: PortableNCA) -> int:
    return max(layer.weight.shape[0] for layer in model.layers)


def _scratch_bytes(model: PortableNCA) -> int:
    alive = model.height * model.width if model.alive_channel is not None else 0
    return 4 * (model.features + 2 * _max_width(model)) + alive


def _float(v: float) -> str:
    """A C float literal that reads back as the same float32."""
    text = f"{v:.9g}"
    return (text if any(ch in text for ch in ".e") else text + ".0") + "f"


def _floats(values: np.ndarray) -> list[str]:
    flat = values.reshape(-1)
    if not np.isfinite(flat).all():
        raise ExportError("the weights hold NaN or infinity: the run diverged")
    return [_float(v) for v in flat.tolist()]


def _ints(values: np.ndarray) -> list[str]:
    return [str(v) for v in values.reshape(-1).tolist()]


def _array(ctype: str, name: str, values: list[str], per_line: int = 8) -> str:
    rows = [", ".join(values[i : i + per_line]) for i in range(0, len(values), per_line)]
    return f"static const {ctype} {name}[] = {{\n    " + ",\n    ".join(rows) + "\n};\n"


def _macro(name: str) -> str:
    return name.upper().replace(".", "")


def _table(ctype: str, name: str, entries: list[str]) -> str:
    return f"static const {ctype} {name}[] = {{\n" + "\n".join(entries) + "\n};\n"


def _weights_struct(table: _Table) -> str:
    if table.scale is None:
        return f"{{{table.name}, NULL, NULL}}"
    return f"{{NULL, {table.name}, {table.name}_scale}}"


def _model_header(model: PortableNCA, tables: list[_Table]) -> str:
    """``nca_model.h``: the sizes as macros, then the weight tables and their descriptions."""
    alive = -1 if model.alive_channel is None else model.alive_channel
    weights = _weight_bytes(model, tables)
    lines = [
        "/* One trained NCA's sizes and weights, for nca.c (written by nca export). */",
        "#ifndef NCA_MODEL_H",
        "#define NCA_MODEL_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        f"#define NCA_HEIGHT {model.height}",
        f"#define NCA_WIDTH {model.width}",
        f"#define NCA_CHANNELS {model.channels}",
        f"#define NCA_FIXED {model.fixed} /* leading channels the update never writes */",
        f"#define NCA_FEATURES {model.features}",
        f"#define NCA_MAX_WIDTH {_max_width(model)}",
        f"#define NCA_N_CONVOLUTIONS {len(model.convolutions)}",
        f"#define NCA_N_LAYERS {len(model.layers)}",
        f"#define NCA_ALIVE_CHANNEL {alive}",
        f"#define NCA_ALIVE_THRESHOLD {model.alive_threshold:.9g}f",
        f"#define NCA_ALIVE_POOL {int(model.alive_pool)}",
        f"#define NCA_FIRE_RATE {model.fire_rate:.9g}f",
        "#define NCA_PAD_ZEROS 0",
        "#define NCA_PAD_CIRCULAR 1",
        "#define NCA_PAD_REFLECT 2",
        f"#define NCA_PADDING {PADDING_CODES[model.padding]} /* {model.padding} */",
        *(f"#define NCA_ACT_{_macro(k)} {v}" for k, v in ACTIVATION_CODES.items() if k),
        f"#define NCA_ACTIVATION {ACTIVATION_CODES[model.activation]} /* {model.activation} */",
        "",
        "/* Memory: the weights below, one state (a step reads one and writes another), and",
        " * nca.c's static scratch. */",
        f"#define NCA_WEIGHT_BYTES {weights}",
        f"#define NCA_STATE_BYTES {4 * model.height * model.width * model.channels}",
        f"#define NCA_SCRATCH_BYTES {_scratch_bytes(model)}",
        "",
        "/* A weight table: float values (f), or int8 values (q) times a scale per output row. */",
        "typedef struct {",
        "    const float *f;",
        "    const int8_t *q;",
        "    const float *scale;",
        "} nca_weights;",
        "",
        "/* One perception convolution: weight[feature][input][ky][kx], where a depthwise one",
        " * has one input, channel feature / (features / NCA_CHANNELS). */",
        "typedef struct {",
        "    int kernel, dilation, features, depthwise, activation;",
        "    nca_weights weight;",
        "    const float *bias;",
        "} nca_convolution;",
        "",
        "/* One linear layer of the update MLP: weight[output][input]. */",
        "typedef struct {",
        "    int inputs, outputs;",
        "    nca_weights weight;",
        "    const float *bias;",
        "} nca_layer;",
        "",
    ]
    body = []
    for table in tables:
        if table.scale is None:
            body.append(_array("float", table.name, _floats(table.values)))
        else:
            body.append(_array("int8_t", table.name, _ints(table.values)))
            body.append(_array("float", f"{table.name}_scale", _floats(table.scale)))
    convs, layers = tables[: len(model.convolutions)], tables[len(model.convolutions) :]
    entries = []
    for i, (conv, table) in enumerate(zip(model.convolutions, convs, strict=True)):
        bias = "NULL"
        if conv.bias is not None:
            bias = f"nca_conv_bias_{i}"
            body.append(_array("float", bias, _floats(conv.bias)))
        entries.append(
            f"    {{{conv.kernel}, {conv.dilation}, {conv.features}, {int(conv.depthwise)}, "
            f"{ACTIVATION_CODES[conv.activation]}, {_weights_struct(table)}, {bias}}},"
        )
    body.append(_table("nca_convolution", "NCA_CONVOLUTIONS", entries))
    entries = []
    for i, (layer, table) in enumerate(zip(model.layers, layers, strict=True)):
        body.append(_array("float", f"nca_layer_bias_{i}", _floats(layer.bias)))
        out, inputs = layer.weight.shape
        entries.append(f"    {{{inputs}, {out}, {_weights_struct(table)}, nca_layer_bias_{i}}},")
    body.append(_table("nca_layer", "NCA_LAYERS", entries))
    return "\n".join(lines) + "\n" + "\n".join(body) + "\n#endif\n"


def _seed_header(seed_state: torch.Tensor, steps: int) -> str:
    """``nca_seed.h``: the task's seed state as its nonzero entries (channels-last indices)."""
    index, values = seed_entries(seed_state)
    return (
        "/* The task's seed state, as its nonzero entries (written by nca export). */\n"
        "#ifndef NCA_SEED_H\n#define NCA_SEED_H\n\n"
        f"#define NCA_SEED_ENTRIES {len(index)}\n"
        f"#define NCA_EXAMPLE_STEPS {max(steps, GROWN)}\n"
        + _array("long", "NCA_SEED_INDEX", _ints(index) or ["0"])
        + _array("float", "NCA_SEED_VALUE", _floats(values) or ["0.0f"])
        + "\n#endif\n"
    )


def _check(
    folder: Path,
    compiler: str,
    nca: NCA,
    original: NCA | None,
    seed_state: torch.Tensor,
    steps: int,
    g: torch.Generator,
) -> tuple[float, float | None]:
    """Compile the step as a shared library and the example as a program; run ``steps``
    steps of the library from a grown state beside ``nca`` (and ``original``, the float
    model an int8 one was rounded from); the max abs errors over all the states."""
    library = folder / "libnca_check.so"
    _compile(compiler, [*FLAGS, "-shared", "-fPIC", "-o", str(library), "nca.c", "-lm"], folder)
    _compile(compiler, [*FLAGS, "-o", "example", "example.c", "nca.c", "-lm"], folder)
    step = ctypes.CDLL(str(library)).nca_step
    with torch.no_grad():
        state, _ = (original or nca).rollout(seed_state, GROWN, g)
        fire = nca.draw_noise(state, steps, g).fire
        want, want_original = state, state
        c_state = np.ascontiguousarray(state[0].permute(1, 2, 0).numpy())
        c_next = np.empty_like(c_state)
        error, drift = 0.0, 0.0
        for i in range(steps):
            mask = None if fire is None else fire[i]
            mask_c = None
            if mask is not None:
                mask_c = np.ascontiguousarray(mask[0, 0].numpy().astype(np.uint8))
            step(
                c_state.ctypes.data_as(ctypes.c_void_p),
                c_next.ctypes.data_as(ctypes.c_void_p),
                None if mask_c is None else mask_c.ctypes.data_as(ctypes.c_void_p),
            )
            c_state, c_next = c_next, c_state
            want = nca.reference_step(want, mask)
            got = torch.from_numpy(c_state).permute(2, 0, 1)[None]
            error = max(error, float((got - want).abs().max()))
            if original is not None:
                want_original = original.reference_step(want_original, mask)
                drift = max(drift, float((got - want_original).abs().max()))
    log.info("C step against PyTorch over %d steps: max abs error %.3g", steps, error)
    return error, drift


def _compile(compiler: str, args: list[str], folder: Path) -> None:
    done = subprocess.run([compiler, *args], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        errors = done.stderr.strip()[-2000:]
        raise ExportError(f"{compiler} {' '.join(args)} failed in {folder}:\n{errors}")
