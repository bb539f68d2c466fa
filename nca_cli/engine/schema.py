"""The engine's config section (``model``): the state's size and the update rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from nca_cli.config import choice, require

PADDINGS = ("zeros", "circular", "reflect", "replicate")
# Which step runs: auto (the fused step on the CPU, the dense step on CUDA), or one of them.
ENGINES = ("auto", "fused", "dense", "reference")
# What damage wipes: a disc, a rectangle, one half of the grid, random cells (damage.py).
DAMAGE_KINDS = ("circle", "rect", "half", "noise")


@dataclass
class ModelConfig:
    """The state's size and the update rule around the perception: MLP sizes,
    stochasticity, alive mask."""

    channels: int = 16  # the whole state; the task's layout says which are inputs, visible
    # Hidden layer sizes of the update MLP; one number is one layer (model.hidden=64).
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    fire_rate: float = 0.5
    alive_mask: bool = True
    alive_threshold: float = 0.1
    # Alive = 3x3 max-pool of the alive channel > threshold (growing NCA); False: the
    # channel itself > threshold (self-classifying MNIST: input > 0.1).
    alive_pool: bool = True
    padding: str = "zeros"
    update_noise: float = 0.0
    zero_init: bool = True
    # Initial weights: PyTorch's defaults, or Glorot-uniform weights and zero biases (the
    # Keras defaults of the TensorFlow notebooks).
    init: str = "torch"
    # Coarse-to-fine cascade (Med-NCA / NCALab): one NCA per scale, coarsest first; [1] is
    # a single NCA at full resolution.
    scales: list[int] = field(default_factory=lambda: [1])
    # The step that runs: auto is the fused step on the CPU (native operators, only the
    # cells that fire) and the dense step on CUDA (fixed shapes, no host syncs, compiled);
    # fused, dense or reference chooses one. All give the reference step's values.
    engine: str = "auto"
    compile: bool = True  # the dense step under torch.compile (its first call compiles)

    def ignored(self) -> dict[str, str]:
        """Fields these values leave unread, and why (``nca_cli.training.checks.ignored``
        collects them so that an override of one is refused)."""
        unread = {}
        if not self.alive_mask:
            why = "model.alive_mask is false: every cell lives"
            unread |= {"alive_threshold": why, "alive_pool": why}
        if self.engine in ("fused", "reference"):
            unread["compile"] = f"model.engine is {self.engine}: only the dense step compiles"
        return unread


def validate_model(m: ModelConfig) -> None:
    """Range checks of the ``model`` section, naming the key."""
    choice(m.padding, list(PADDINGS), "model.padding")
    choice(m.init, ["torch", "glorot"], "model.init")
    choice(m.engine, list(ENGINES), "model.engine")
    require(0.0 < m.fire_rate <= 1.0, "model.fire_rate", m.fire_rate, "a number in (0, 1]")
    require(all(h > 0 for h in m.hidden), "model.hidden", m.hidden, "positive layer sizes")
    require(m.update_noise >= 0, "model.update_noise", m.update_noise, "a number >= 0")
    require(
        len(m.scales) > 0 and all(s >= 1 for s in m.scales) and m.scales[-1] == 1,
        "model.scales",
        m.scales,
        "downsampling factors >= 1, coarsest first, ending with 1 (e.g. [4, 2, 1])",
    )
    require(m.channels > 0, "model.channels", m.channels, "a positive integer")
