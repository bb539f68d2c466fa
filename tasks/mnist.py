"""Self-classifying MNIST digits (Randazzo et al. 2020).

Each living cell (input > 0.1) sees only its neighbourhood and must agree with the others
on the digit's class: the grey image is a fixed input channel and ten visible channels are
the cells' class votes. The pool holds fresh and mutated digits (the input swapped for a
digit of another class, the state kept), which teaches cells to change their minds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import RunConfig, require
from nca_cli.datasets.arrays import load_mnist
from nca_cli.datasets.splits import Split, random_split
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import to_uint8
from nca_cli.tasks._cases import CaseTask
from nca_cli.tasks.base import Rollout, TaskConfig

# Ten well-separated colours for the class votes.
PALETTE = torch.tensor(
    [
        [0.90, 0.10, 0.10], [0.95, 0.55, 0.10], [0.95, 0.85, 0.10], [0.45, 0.80, 0.15],
        [0.10, 0.65, 0.35], [0.10, 0.75, 0.80], [0.15, 0.40, 0.90], [0.45, 0.20, 0.85],
        [0.85, 0.25, 0.75], [0.50, 0.35, 0.25],
    ]
)  # fmt: skip


@dataclass
class MNISTDataset:
    """Official train/test files; ``val_fraction`` of train held out by ``split_seed``
    unless ``splits`` names a split file of ids ``train/<i>`` and ``test/<i>``."""

    size: int = 28
    val_fraction: float = 0.1
    split_seed: int = 0
    splits: str | None = None
    download: bool = True


@dataclass
class ProtocolConfig:
    """Evaluation: accuracy averaged over steps ``window`` and at step ``final``, on at
    most ``samples`` digits of the split (0: all)."""

    window: list[int] = field(default_factory=lambda: [20, 30])
    final: int = 200
    samples: int = 500


@dataclass
class MNISTConfig(TaskConfig):
    evaluation: ProtocolConfig = field(default_factory=ProtocolConfig)


class MNISTTask(CaseTask):
    config_schema = MNISTConfig
    dataset_schema = MNISTDataset
    losses = ("mse", "cross_entropy")
    objective = ("accuracy", "maximize")

    def __init__(self, run: RunConfig) -> None:
        super().__init__(run)
        d, e = self.dataset_config, self.config.evaluation
        require(d.size >= 8, "dataset.size", d.size, "an integer >= 8")
        require(
            len(e.window) == 2 and 1 <= e.window[0] <= e.window[1] <= e.final,
            "task.evaluation.window",
            e.window,
            f"[first, last] steps with 1 <= first <= last <= final ({e.final})",
        )
        arrays = load_mnist(None, d.download)
        images, labels, ids = [], [], []
        for split, (x, y) in arrays.items():
            t = torch.from_numpy(x).float()[:, None] / 255.0
            if d.size != t.shape[-1]:
                t = F.interpolate(t, size=(d.size, d.size), mode="bilinear")
            images.append(t)
            labels.append(torch.from_numpy(y).long())
            ids += [f"{split}/{i}" for i in range(len(y))]
        self.images, self.labels = torch.cat(images), torch.cat(labels)
        default: Split = {}
        if not d.splits:
            train_ids = [c for c in ids if c.startswith("train/")]
            train_labels = [int(y) for y in arrays["train"][1]]
            default = random_split(train_ids, d.val_fraction, 0.0, d.split_seed, train_labels)
            default["test"] = [c for c in ids if c.startswith("test/")]
        self.use_cases(ids, default, d.splits)
        self.eval_limit = self.config.evaluation.samples
        train = torch.tensor(self.rows["train"])
        self.train_by_label = [train[self.labels[train] == k] for k in range(10)]

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, inputs=1, visible=10, alpha=None)

    @property
    def alive_channel(self) -> int | None:
        return 0

    def batch_of(self, rows: list[int]) -> Batch:
        images = self.images[rows]
        state = torch.zeros(len(images), self.layout.channels, *images.shape[-2:])
        state[:, :1] = images
        return {"state": state, "label": self.labels[rows]}

    def mutate(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Swap each input digit for one of another class; the cells' state stays."""
        labels = batch["label"].clone()
        state = batch["state"].clone()
        for i in range(len(labels)):
            new = (int(labels[i]) + int(torch.randint(1, 10, (1,), generator=generator))) % 10
            rows = self.train_by_label[new]
            row = rows[int(torch.randint(0, len(rows), (1,), generator=generator))]
            state[i, :1] = self.images[row].to(state)
            labels[i] = new
        return {**batch, "state": state, "label": labels}

    def votes(self, state: Tensor) -> Tensor:
        return state[:, self.layout.visible_slice].float()

    def alive(self, state: Tensor) -> Tensor:
        return (state[:, :1] > 0.1).float()

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        alive = self.alive(state)
        label = batch["label"].to(state.device)
        votes = self.votes(state)
        if self.loss_config.name == "cross_entropy":
            target = label.view(-1, 1, 1).expand(-1, *votes.shape[-2:])
            per_cell = F.cross_entropy(votes, target, reduction="none")[:, None]
        else:
            onehot = F.one_hot(label, 10).float().view(-1, 10, 1, 1)
            per_cell = ((votes - onehot) ** 2).mean(1, keepdim=True)
        return (per_cell * alive).flatten(1).sum(1) / alive.flatten(1).sum(1).clamp_min(1)

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-cell accuracy and agreement (share of cells voting with the majority)."""
        alive = self.alive(state)[:, 0]
        n = alive.flatten(1).sum(1).clamp_min(1)
        vote = self.votes(state).argmax(1)
        label = batch["label"].to(state.device).view(-1, 1, 1)
        accuracy = ((vote == label).float() * alive).flatten(1).sum(1) / n
        counts = F.one_hot(vote, 10).float() * alive[..., None]
        agreement = counts.flatten(1, 2).sum(1).max(1).values / n
        return {"accuracy": accuracy, "agreement": agreement, "loss": self.loss(state, batch)}

    def evaluate(self, rollout: Rollout, split: str, batch_size: int, steps: int) -> dict:
        """The published protocol: accuracy over a window of steps and at a final step."""
        e = self.config.evaluation
        sums: dict[str, float] = {}
        count = 0
        for batch in self.evaluation_batches(split, batch_size):
            state = rollout(batch["state"], e.window[0])
            window = [self.predict(state, batch)["accuracy"]]
            for _ in range(e.window[0], e.window[1]):
                state = rollout(state, 1)
                window.append(self.predict(state, batch)["accuracy"])
            state = rollout(state, e.final - e.window[1]) if e.final > e.window[1] else state
            final = self.predict(state, batch)
            values = {
                f"accuracy_{e.window[0]}_{e.window[1]}": torch.stack(window).mean(0),
                "accuracy": final["accuracy"],
                "agreement": final["agreement"],
                "loss": final["loss"],
            }
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            count += len(batch["label"])
        return {k: v / count for k, v in sums.items()}

    def render(self, state: Tensor) -> np.ndarray:
        """Each living cell in the colour of its vote, brightness from the digit."""
        state = state.detach().float().cpu()
        grey = state[:, :1].clamp(0, 1)
        colour = PALETTE[self.votes(state).argmax(1)].permute(0, 3, 1, 2)
        alive = self.alive(state)
        shown = colour * grey * alive + (1 - alive) * 1.0
        return to_uint8(shown.permute(0, 2, 3, 1).numpy())


TASK = MNISTTask
