"""The search space, written in Hydra's override grammar and turned into Optuna
distributions: ``choice(a, b)`` or ``a,b`` (categorical), ``range(8, 33, 8)`` (integers),
``interval(0.1, 1.0)`` (floats), ``tag(log, interval(1e-4, 1e-2))`` (log scale) and
``tag(int, interval(8, 64))`` (integers). Sampled values go back to the trial as plain
``key=value`` overrides, so a trial is an ordinary training run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nca_cli.config import ConfigError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Dimension:
    """One searched key: how to write it back (``key``, with any ``+`` prefix), its Optuna
    parameter name, its distribution and, when finite, its grid of values."""

    key: str
    name: str
    kind: str  # "choice", "range" or "interval"
    values: tuple[Scalar, ...]  # the choices or range values; (low, high) for an interval
    log: bool = False
    integer: bool = False

    @property
    def grid(self) -> tuple[Scalar, ...] | None:
        return None if self.kind == "interval" else self.values

    def distribution(self, grid: bool = False) -> BaseDistribution:
        """The Optuna distribution; on a grid every dimension is categorical, so that a
        finished trial's parameters compare equal to a grid point."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if grid or self.kind == "choice":
            return CategoricalDistribution(list(self.values))
        if self.kind == "range":
            low, high = self.values[0], self.values[-1]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in self.values):
                step = self.values[1] - self.values[0] if len(self.values) > 1 else 1  # type: ignore[operator]
                if step > 0:  # type: ignore[operator]
                    return IntDistribution(int(low), int(high), step=int(step))  # type: ignore[arg-type]
            return CategoricalDistribution(list(self.values))
        low, high = self.values
        if self.integer:
            return IntDistribution(int(low), int(high), log=self.log)  # type: ignore[arg-type]
        return FloatDistribution(float(low), float(high), log=self.log)  # type: ignore[arg-type]

    def override(self, value: Scalar) -> str:
        return f"{self.key}={format_value(value)}"


def format_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged (strings are quoted
    when they would otherwise parse as something else)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    text = str(value)
    if _parses_to(text) == text:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parses_to(text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"k={text}")
    except Exception:
        return None
    return None if override.is_sweep_override() else override.value()


def _preset_lines(params: Mapping[str, Any]) -> list[str]:
    """A preset's ``params`` as override lines: strings in the override grammar, lists as
    choices, anything else a fixed value."""
    lines = []
    for key, value in params.items():
        if isinstance(value, str):
            lines.append(f"{key}={value}")
        elif isinstance(value, Sequence):
            lines.append(f"{key}=choice({', '.join(format_value(v) for v in value)})")
        else:
            lines.append(f"{key}={format_value(value)}")
    return lines


def split_arguments(
    params: Mapping[str, Any], arguments: Sequence[str]
) -> tuple[list[Dimension], list[str]]:
    """The searched dimensions and the fixed overrides of a sweep, from the preset's
    ``params`` and the command line; for a key given in both, the command line wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from nca_cli.shortcuts import expand

    parser = OverridesParser.create()
    try:  # shortcuts name their fields; the preset's and the command line's apart, as the
        # command line replaces what the preset says
        lines = [*expand(_preset_lines(params)), *expand(arguments)]
        overrides = parser.parse_overrides(lines)
    except HydraException as err:
        raise ConfigError(f"cannot parse the search space: {err}") from None
    last: dict[str, Any] = {}
    for override in overrides:
        last[override.key_or_group] = override  # a later line replaces an earlier one
    dims: list[Dimension] = []
    fixed: list[str] = []
    for name, override in last.items():
        if override.is_sweep_override():
            dims.append(_dimension(override.get_key_element(), name, override.value()))
        else:
            fixed.append(override.input_line)
    return dims, fixed


def _dimension(key: str, name: str, sweep: Any) -> Dimension:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    tags = set(getattr(sweep, "tags", set()))
    unknown = tags - {"log", "int"}
    if unknown:
        raise ConfigError(f"unknown tag {sorted(unknown)} on '{name}'; allowed: log, int")
    if isinstance(sweep, ChoiceSweep):
        values = tuple(sweep.list)
        for value in values:
            if not isinstance(value, str | int | float | bool | type(None)):
                raise ConfigError(f"choices of '{name}' must be single values, got {value!r}")
        return Dimension(key, name, "choice", values)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        count = max(0, math.ceil((stop - start) / step)) if step else 0
        values = tuple(start + i * step for i in range(count))
        if not values:
            raise ConfigError(f"range of '{name}' is empty")
        return Dimension(key, name, "range", values)
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if not low < high:
            raise ConfigError(f"interval of '{name}' must have start < end, got {low}, {high}")
        if "log" in tags and low <= 0:
            raise ConfigError(f"log interval of '{name}' must be positive, got {low}, {high}")
        integer = "int" in tags
        return Dimension(key, name, "interval", (low, high), log="log" in tags, integer=integer)
    raise ConfigError(
        f"'{name}' uses a sweep the search cannot sample ({type(sweep).__name__}); "
        "use choice(...), range(...) or interval(...)"
    )
