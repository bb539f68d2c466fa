"""The channel layout: slices and validation."""

from __future__ import annotations

import pytest
import torch

from nca_cli.config import ConfigError
from nca_cli.engine.layout import ChannelLayout


def test_layout_rejects_too_few_channels() -> None:
    with pytest.raises(ValueError, match=r"at least 4"):
        ChannelLayout(channels=3)
    with pytest.raises(ValueError, match=r"at least 9"):
        ChannelLayout(channels=8, inputs=3, conditions=2, visible=4)
    with pytest.raises(ValueError, match=r"alpha"):
        ChannelLayout(channels=8, visible=3, alpha=3)
    with pytest.raises(ValueError):
        ChannelLayout(channels=8, inputs=-1)


def test_layout_slices() -> None:
    layout = ChannelLayout(channels=16, inputs=2, conditions=3, visible=4, alpha=3)
    assert layout.fixed == 5
    assert layout.updated == 11
    assert layout.hidden == 7
    assert layout.input_slice == slice(0, 2)
    assert layout.condition_slice == slice(2, 5)
    assert layout.visible_slice == slice(5, 9)
    assert layout.hidden_slice == slice(9, 16)
    assert layout.alpha_channel == 8
    names = list(range(16))
    slices = (layout.input_slice, layout.condition_slice, layout.visible_slice)
    assert [i for s in (*slices, layout.hidden_slice) for i in names[s]] == names
    plain = ChannelLayout(16)
    assert plain.alpha_channel == 3
    assert plain.visible_slice == slice(0, 4)
    assert ChannelLayout(8, inputs=1, visible=2, alpha=None).alpha_channel is None


def test_circular_padding_wider_than_the_grid_names_the_padding() -> None:
    from nca_cli.engine.perception import pad

    assert pad(torch.zeros(1, 1, 16, 16), 16, "circular").shape[-1] == 48
    with pytest.raises(ConfigError, match=r"'model.padding': 'circular'.*20 cells.*16x16"):
        pad(torch.zeros(1, 1, 16, 16), 20, "circular")
