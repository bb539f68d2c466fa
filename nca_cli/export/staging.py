"""Exports are written into a temporary folder beside their destination and moved there
only once complete and checked, so that a refused or failed export leaves nothing."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder to write the export in; its files move into ``out`` when the block ends
    without an error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        yield Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for item in Path(tmp).iterdir():
            shutil.move(str(item), out / item.name)
