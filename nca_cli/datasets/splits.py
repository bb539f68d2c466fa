"""Seeded train/validation/test splits by case id, saved as JSON with every run.

The layout is nnU-Net's: ``{"train": [...], "val": [...], "test": [...]}`` of case ids;
k-fold writes one such file per fold and ``dataset.splits`` reuses any of them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from nca_cli.atomic import write_text_atomic
from nca_cli.datasets.storage import DataError

SPLITS = ("train", "val", "test")
Split = dict[str, list[str]]


def _take(
    ids: list[str], labels: list[int] | None, count: int, seed: int
) -> tuple[list[str], list[str], list[int] | None]:
    """Hold out ``count`` of ``ids``, stratified by ``labels`` when every class can be."""
    from sklearn.model_selection import train_test_split

    stratify = None
    if labels is not None and count >= len(set(labels)) and min(Counter(labels).values()) >= 2:
        stratify = labels
    order = list(range(len(ids)))
    keep, held = train_test_split(order, test_size=count, random_state=seed, stratify=stratify)
    kept_labels = [labels[i] for i in keep] if labels is not None else None
    return [ids[i] for i in keep], [ids[i] for i in held], kept_labels


def random_split(
    ids: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: Sequence[int] | None = None,
) -> Split:
    """Split ``ids`` at random, stratified by ``labels`` when given; reproducible by seed."""
    rest, rest_labels = list(ids), list(labels) if labels is not None else None
    n = len(rest)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise DataError(
            f"{n} cases are too few for validation {val_fraction} and test {test_fraction}"
        )
    split: Split = {"train": [], "val": [], "test": []}
    if n_test:
        rest, split["test"], rest_labels = _take(rest, rest_labels, n_test, seed)
    if n_val:
        rest, split["val"], rest_labels = _take(rest, rest_labels, n_val, seed)
    split["train"] = rest
    check_disjoint(split, "random split")
    return {k: sorted(v) for k, v in split.items()}


def check_disjoint(split: Split, where: str) -> None:
    seen: dict[str, str] = {}
    for name in SPLITS:
        for case in split.get(name, []):
            if case in seen:
                raise DataError(f"{where}: case {case!r} is in both {seen[case]} and {name}")
            seen[case] = name


def load_splits(path: Path, known: set[str]) -> Split:
    """Read a split file, checking its layout and that every case exists."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read split file {path}: {err}") from None
    if not isinstance(raw, dict) or "train" not in raw or set(raw) - set(SPLITS):
        raise DataError(f"split file {path} must map train, val (and test) to lists of case ids")
    split = {name: [str(c) for c in raw.get(name, [])] for name in SPLITS}
    unknown = sorted(set().union(*split.values()) - known)
    if unknown:
        raise DataError(f"split file {path} names unknown cases: {', '.join(unknown[:5])}")
    if not split["train"]:
        raise DataError(f"split file {path} has an empty train split")
    check_disjoint(split, str(path))
    return split


def save_splits(path: Path, split: Split) -> None:
    write_text_atomic(path, json.dumps(split, indent=1) + "\n")
