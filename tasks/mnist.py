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

from nca_cli.config import choice, require
from nca_cli.datasets.arrays import load_mnist
from nca_cli.datasets.splits import Split, random_split
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import to_uint8
from nca_cli.tasks._cases import CaseTask
from nca_cli.tasks.base import LossConfig, Rollout, RunSections, TaskConfig

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
    padding: int = 0  # empty cells added on every side (NCAtorch: 12, a 52x52 grid)
    val_fraction: float = 0.1
    split_seed: int = 0
    splits: str | None = None
    download: bool = True


@dataclass
class ProtocolConfig:
    """Evaluation: accuracy averaged over steps ``window`` and at step ``final``, on at
    most ``samples`` digits of the split (0: all). ``average: digits`` is the mean of the
    digits' per-cell accuracies; ``cells`` pools the living cells of every digit (the
    notebook's figure, in which a digit with more ink weighs more)."""

    window: list[int] = field(default_factory=lambda: [20, 30])
    final: int = 200
    samples: int = 500
    average: str = "digits"


@dataclass
class MNISTConfig(TaskConfig):
    """``mutate_to: other`` gives a mutated sample a digit of another class; ``any`` draws
    any training digit, as the notebook does (a tenth keep their class). ``input: grey`` is
    the fixed channel 0 as the image; ``mask`` its cells > 0.1 as 1 (NCAtorch).
    ``seed: zeros`` starts the other channels at 0; ``grey`` copies the image into every one
    of them (NCAtorch)."""

    mutate_to: str = "other"
    input: str = "grey"
    seed: str = "zeros"
    evaluation: ProtocolConfig = field(default_factory=ProtocolConfig)


@dataclass
class MNISTLoss(LossConfig):
    """``reduction: mean`` averages the per-cell loss over living cells (and MSE over the
    ten class channels); ``half_sum`` sums the squared error over living cells and
    channels and halves it, as the notebook's L2 loss does; ``all_cells`` averages it over
    every cell and class channel, dead cells with target 0 (NCAtorch's nn.MSELoss).
    ``overflow`` weighs the mean of |v - clamp(v, 0, 1)| over the class channels of every
    cell, added to the loss (NCAtorch: 1.0)."""

    reduction: str = "mean"
    overflow: float = 0.0


class MNISTTask(CaseTask):
    config_schema = MNISTConfig
    dataset_schema = MNISTDataset
    loss_schema = MNISTLoss
    loss_config: MNISTLoss
    losses = ("mse", "cross_entropy")
    objective = ("accuracy", "maximize")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d, e = self.dataset_config, self.config.evaluation
        require(d.size >= 8, "dataset.size", d.size, "an integer >= 8")
        require(
            len(e.window) == 2 and 1 <= e.window[0] <= e.window[1] <= e.final,
            "task.evaluation.window",
            e.window,
            f"[first, last] steps with 1 <= first <= last <= final ({e.final})",
        )
        choice(e.average, ["digits", "cells"], "task.evaluation.average")
        choice(self.config.mutate_to, ["other", "any"], "task.mutate_to")
        reduction = self.loss_config.reduction
        choice(reduction, ["mean", "half_sum", "all_cells"], "loss.reduction")
        require(
            reduction == "mean" or self.loss_config.name == "mse",
            "loss.reduction",
            reduction,
            "'mean' with loss=cross_entropy (half_sum and all_cells reduce the MSE)",
        )
        require(self.loss_config.overflow >= 0, "loss.overflow", self.loss_config.overflow,
                "a weight >= 0")  # fmt: skip
        choice(self.config.input, ["grey", "mask"], "task.input")
        choice(self.config.seed, ["zeros", "grey"], "task.seed")
        require(d.padding >= 0, "dataset.padding", d.padding, "an integer >= 0")
        arrays = load_mnist(None, d.download)
        images, labels, ids = [], [], []
        for split, (x, y) in arrays.items():
            t = torch.from_numpy(x).float()[:, None] / 255.0
            if d.size != t.shape[-1]:
                t = F.interpolate(t, size=(d.size, d.size), mode="bilinear")
            images.append(F.pad(t, [d.padding] * 4) if d.padding else t)
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
        self.train_rows = train = torch.tensor(self.rows["train"])
        self.train_by_label = [train[self.labels[train] == k] for k in range(10)]

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, inputs=1, visible=10, alpha=None)

    @property
    def alive_channel(self) -> int | None:
        return 0

    def batch_of(self, rows: list[int]) -> Batch:
        images = self.images[rows]
        state = torch.zeros(len(images), self.layout.channels, *images.shape[-2:])
        if self.config.seed == "grey":
            state[:, 1:] = images
        state[:, :1] = self.input_channel(images)
        return {"state": state, "label": self.labels[rows]}

    def input_channel(self, images: Tensor) -> Tensor:
        """The fixed channel 0 of digits ``(B, 1, H, W)``: the image, or its mask."""
        return (images > 0.1).to(images) if self.config.input == "mask" else images

    def mutate(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Swap each input digit for another training digit (of another class, or any
        under ``mutate_to: any``); living cells keep their state, cells the new digit
        leaves dead lose it before the next step perceives them."""
        labels = batch["label"].clone()
        state = batch["state"].clone()
        for i in range(len(labels)):
            if self.config.mutate_to == "any":
                pick = int(torch.randint(0, len(self.train_rows), (1,), generator=generator))
                row = self.train_rows[pick]
            else:
                new = (int(labels[i]) + int(torch.randint(1, 10, (1,), generator=generator))) % 10
                rows = self.train_by_label[new]
                row = rows[int(torch.randint(0, len(rows), (1,), generator=generator))]
            image = self.images[row].to(state)
            state[i, :1] = self.input_channel(image)
            state[i, 1:] *= (image > 0.1).to(state)
            labels[i] = self.labels[row]
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
            reduction = self.loss_config.reduction
            if reduction == "half_sum":
                return ((votes - onehot) ** 2 * alive).flatten(1).sum(1) / 2
            if reduction == "all_cells":
                return ((votes - onehot * alive) ** 2).flatten(1).mean(1) + self._overflow(votes)
            per_cell = ((votes - onehot) ** 2).mean(1, keepdim=True)
        mean = (per_cell * alive).flatten(1).sum(1) / alive.flatten(1).sum(1).clamp_min(1)
        return mean + self._overflow(votes)

    def _overflow(self, votes: Tensor) -> Tensor | float:
        weight = self.loss_config.overflow
        if not weight:
            return 0.0
        return weight * (votes - votes.clamp(0, 1)).abs().flatten(1).mean(1)

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
        count = 0.0
        for batch in self.evaluation_batches(split, batch_size):
            # Each digit weighs 1, or its number of living cells (average: cells).
            weight = torch.ones(len(batch["label"]))
            if e.average == "cells":
                weight = self.alive(batch["state"]).flatten(1).sum(1).cpu()
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
                sums[k] = sums.get(k, 0.0) + float((v.cpu() * weight).sum())
            count += float(weight.sum())
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
