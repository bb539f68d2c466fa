"""The console that prints the CLI's tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def table_console() -> Console:
    """A rich console for tables: the terminal's width, or in logs and pipes (where rich
    assumes 80 columns and cuts names short) at least 120 columns."""
    from rich.console import Console  # rich loads in 0.1 s: only when a table is printed

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    return console
