"""Channel layout of an NCA state, declared by the task and read by the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelLayout:
    """Which channels of the state mean what.

    Channels are ordered ``[input | condition | visible | hidden]``. Input and condition
    channels are fixed: the update never writes them (an image to segment, a one-hot class
    to grow). Visible channels are what the task reads out (RGBA, class logits, a mask);
    ``alpha`` indexes the visible channel that marks living cells, if the task has one.
    """

    channels: int
    inputs: int = 0
    conditions: int = 0
    visible: int = 4
    alpha: int | None = 3

    def __post_init__(self) -> None:
        if min(self.inputs, self.conditions, self.visible) < 0:
            raise ValueError("channel counts must be non-negative")
        if self.hidden < 0:
            raise ValueError(
                f"channels={self.channels} is too small for this task: it needs at least "
                f"{self.fixed + self.visible} (inputs {self.inputs} + conditions "
                f"{self.conditions} + visible {self.visible})"
            )
        if self.alpha is not None and not 0 <= self.alpha < self.visible:
            raise ValueError(f"alpha index {self.alpha} is not a visible channel")

    @property
    def fixed(self) -> int:
        """Number of leading channels the update leaves untouched."""
        return self.inputs + self.conditions

    @property
    def updated(self) -> int:
        """Number of channels the update writes."""
        return self.channels - self.fixed

    @property
    def hidden(self) -> int:
        return self.channels - self.fixed - self.visible

    @property
    def input_slice(self) -> slice:
        return slice(0, self.inputs)

    @property
    def condition_slice(self) -> slice:
        return slice(self.inputs, self.fixed)

    @property
    def visible_slice(self) -> slice:
        return slice(self.fixed, self.fixed + self.visible)

    @property
    def hidden_slice(self) -> slice:
        return slice(self.fixed + self.visible, self.channels)

    @property
    def alpha_channel(self) -> int | None:
        """Absolute index of the alpha channel in the state, or None."""
        return None if self.alpha is None else self.fixed + self.alpha
