"""Integers carried in embedding channels come back exactly, in every dtype the engine runs."""

from __future__ import annotations

import pytest
import torch

from aim_vllm.core import position_channels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact(dtype: torch.dtype) -> None:
    embeds = torch.randn(5, 7).to(dtype)
    values = torch.tensor(
        [[0, 1, 2], [255, 256, 257], [4095, 65535, 65536], [1_000_000, 3, 9], [16_777_215, 0, 0]]
    )
    attached = position_channels.attach(embeds, values)
    assert attached.shape == (5, 7 + position_channels.channels_for(3)) and attached.dtype == dtype
    got_embeds, got = position_channels.detach(attached, 7)
    assert torch.equal(got, values) and torch.equal(got_embeds, embeds)


def test_bfloat16_would_lose_raw_integers() -> None:
    """Why digits: bfloat16 holds 257 as 256, as EVS's raw channels would."""
    assert torch.tensor(257.0).to(torch.bfloat16).item() == 256.0


def test_out_of_range_and_bad_widths_are_refused() -> None:
    with pytest.raises(ValueError):
        position_channels.attach(torch.zeros(1, 2), torch.tensor([[-1]]))
    with pytest.raises(ValueError):
        position_channels.attach(torch.zeros(1, 2), torch.tensor([[2**24]]))
    with pytest.raises(ValueError):
        position_channels.detach(torch.zeros(1, 4), 2)
