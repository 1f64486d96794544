"""Integers carried as extra channels of an embedding, exact in any float dtype.

vLLM's mechanism for positions that depend on the encoder's output (EVS,
`SupportsMultiModalPruning.recompute_mrope_positions`): the model appends position channels to
each item's embedding, and the runner hands them back to the model, which strips them and
rewrites the request's M-RoPE positions before the LLM runs. EVS appends raw positions, exact in
bfloat16 only up to 256; here each integer is written as `DIGITS` base-`BASE` digits, each exact
in bfloat16, float16 and float32.

Dimensions:
    N: rows of one item's embedding; C: embedding channels; V: integers per row.
"""

from __future__ import annotations

import torch

BASE = 256  # every digit 0..255 is exact in bfloat16 (8 significant bits)
DIGITS = 3  # integers up to BASE ** DIGITS - 1 = 16,777,215


def channels_for(num_values: int) -> int:
    """Extra channels that `attach` adds for `num_values` integers per row."""
    return num_values * DIGITS


def attach(embeds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[N, C] embedding and [N, V] non-negative integers -> [N, C + V * DIGITS]."""
    if values.dim() != 2 or values.shape[0] != embeds.shape[0]:
        raise ValueError(f"values {tuple(values.shape)} must be [rows of {tuple(embeds.shape)}, V]")
    values = values.long()
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= BASE**DIGITS):
        raise ValueError(
            f"values must lie in [0, {BASE**DIGITS}), got [{int(values.min())}, {int(values.max())}]"
        )
    digits = [(values // BASE**i) % BASE for i in range(DIGITS)]  # least significant first
    encoded = torch.stack(digits, dim=-1).flatten(1)  # (N, V * DIGITS)
    return torch.cat([embeds, encoded.to(device=embeds.device, dtype=embeds.dtype)], dim=1)


def detach(x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `attach`: ([N, width] embedding view, [N, V] integers) of [N, width + V * DIGITS]."""
    extra = x.shape[1] - width
    if extra <= 0 or extra % DIGITS:
        raise ValueError(f"{x.shape[1]} channels are not {width} plus whole integers of {DIGITS} digits")
    digits = x[:, width:].round().long().view(x.shape[0], extra // DIGITS, DIGITS)
    scale = BASE ** torch.arange(DIGITS, device=x.device)
    return x[:, :width], (digits * scale).sum(-1)
