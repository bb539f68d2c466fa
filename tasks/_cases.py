"""Tasks over stored cases (images with masks or labels), addressed by case id."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

from nca_cli.config import ConfigError
from nca_cli.datasets.splits import Split, load_splits
from nca_cli.engine.pool import Batch
from nca_cli.tasks.base import Task


class CaseTask(Task):
    """Splits are lists of case ids; ``rows`` maps each split to rows of the task's tensors.

    Subclasses load their cases, call :meth:`use_cases`, and build batches of rows.
    """

    labels: Tensor | None = None  # class of each row, for stratified k-fold
    eval_limit: int = 0  # evaluate at most this many cases of a split (0: all)

    def use_cases(self, ids: list[str], default: Split, splits_file: str | None) -> None:
        """Adopt ``default`` as the split, or the split file the config names."""
        self.index = {case: i for i, case in enumerate(ids)}
        self.splits: Split = load_splits(splits_file, set(self.index)) if splits_file else default
        self.rows = {name: [self.index[c] for c in cases] for name, cases in self.splits.items()}

    @abstractmethod
    def batch_of(self, rows: list[int]) -> Batch:
        """Seed states and targets of the cases at ``rows``."""

    def has_split(self, split: str) -> bool:
        return bool(self.rows.get(split))

    def case_labels(self, ids: list[str]) -> list[int] | None:
        if self.labels is None:
            return None
        return [int(self.labels[self.index[c]]) for c in ids]

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        train = self.rows["train"]
        pick = torch.randint(0, len(train), (n,), generator=generator).tolist()
        return self.batch_of([train[i] for i in pick])

    def evaluation_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        rows = self.rows.get(split) or []
        if not rows:
            raise ConfigError(f"task {self.config.name!r} has no {split} cases in its split")
        rows = rows[: self.eval_limit] if self.eval_limit else rows
        for start in range(0, len(rows), batch_size):
            yield self.batch_of(rows[start : start + batch_size])
