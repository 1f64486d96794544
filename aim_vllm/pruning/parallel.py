"""The tensor-parallel group as pruning needs it: one decision, the same on every rank.

Under tensor parallelism (vllm==0.32.0 `GroupCoordinator`) each rank holds num_heads / tp query
heads, and the all-reduces after o_proj and the MLP add the ranks' partial results row by row:
every rank must keep the same rows, or those sums mix different tokens. So at a pruning layer
1. every rank sums its heads' importance terms and `head_sum` (an all-reduce) adds the ranks'
   sums: each rank scores with all heads, as AIM defines importance;
2. `agree` broadcasts rank 0's kept rows, so no float difference between the ranks' copies of
   the reduced scores can make them keep different rows.
Per-request usage is written by rank 0 only (`is_reporter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aim_vllm.core.importance import HeadSum


@dataclass(frozen=True)
class TensorParallel:
    world_size: int = 1
    rank: int = 0
    group: Any = None  # vLLM's tensor-parallel GroupCoordinator (None for one rank)

    @classmethod
    def current(cls) -> TensorParallel:
        """The calling worker's tensor-parallel group (inside a vLLM worker, after its set-up)."""
        from aim_vllm.compat import get_tp_group

        group = get_tp_group()
        return cls(group.world_size, group.rank_in_group, group) if group.world_size > 1 else cls()

    @property
    def head_sum(self) -> HeadSum | None:
        return None if self.world_size == 1 else self.group.all_reduce

    def agree(self, kept: torch.Tensor) -> torch.Tensor:
        """Rank 0's `kept` on every rank (same shape everywhere: the counts are deterministic)."""
        if self.world_size == 1:
            return kept
        return self.group.broadcast(kept.to(self.group.device), src=0)

    @property
    def is_reporter(self) -> bool:
        return self.rank == 0
