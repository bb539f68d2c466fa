"""Tasks plug data, channel layout, loss, metrics and rendering into the engine.

``task.name`` in the config names a module of this package (``growing`` loads
``nca_cli.tasks.growing``) or, with a dot, any importable module; the module's ``TASK``
attribute is the :class:`~nca_cli.tasks.base.Task` subclass. A new task is a new module
and a new config file, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from nca_cli.config import ConfigError

if TYPE_CHECKING:
    from nca_cli.tasks.base import RunSections, Task


def available_tasks() -> list[str]:
    """Names of the tasks bundled with nca."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name != "base"
    )


def task_class(name: str) -> type[Task]:
    """The task class registered under ``name``."""
    module_name = name if "." in name else f"{__name__}.{name}"
    if "." not in name and name not in available_tasks():
        raise ConfigError(
            f"invalid value for 'task.name': {name!r}; expected one of "
            + ", ".join(available_tasks())
            + " (or an importable module path)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"invalid value for 'task.name': cannot import {name!r}: {err}") from None
    task = getattr(module, "TASK", None)
    if task is None:
        raise ConfigError(f"invalid value for 'task.name': module {name!r} defines no TASK")
    return task


def task_of(run: RunSections) -> type[Task]:
    """The task class that a run config names in ``task.name``."""
    return task_class(str(run.task.get("name", "")))
