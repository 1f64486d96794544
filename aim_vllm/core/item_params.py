"""Per-item AIM parameters as they travel with a multimodal item through vLLM (plain torch).

The processor attaches them to every item as one float tensor in the field `aim_<modality>`, so
they reach the model's `embed_multimodal` (merging) and the runner's request state (pruning)
with vLLM's own multimodal caching and batching; both sides decode them here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from aim_vllm.core.schedule import MERGE_METHODS, PRUNE_METHODS, AimSchedule


@dataclass(frozen=True)
class ItemParams:
    """Per-item AIM parameters, carried as a float64 tensor [14] in the item's `aim_<modality>` field.

    Attributes:
        schedule: the request's schedule (the same on every item of a request).
        tokens_in: the item's visual tokens before merging (for usage reports).
        base_tokens, grid_rows: layout of a packed anyres image (0 for videos).
        encoder_flops_off, encoder_flops: the item's vision-encoder FLOPs as the stock tower runs
            it and at the schedule's `encoder_keep` (`core.encoder_flops`; 0: no FLOPs model).
        budget: the FLOPs budget the schedule was solved for (0: not a budget level), over the
            whole prefill (`budget_whole`) or the LLM's.
    """

    schedule: AimSchedule
    tokens_in: int
    base_tokens: int = 0
    grid_rows: int = 0
    encoder_flops_off: float = 0.0
    encoder_flops: float = 0.0
    budget: float = 0.0
    budget_whole: bool = False

    def to_tensor(self) -> torch.Tensor:
        s = self.schedule
        l1, l2 = s.prune_layers or (-1, -1)
        values = [s.merge_ratio, l1, l2, self.tokens_in, self.base_tokens, self.grid_rows]
        values += [MERGE_METHODS.index(s.merge_method), PRUNE_METHODS.index(s.prune_method)]
        values.append(-1.0 if s.prune_keep is None else s.prune_keep)
        values += [s.encoder_keep, self.encoder_flops_off, self.encoder_flops]
        values += [self.budget, float(self.budget_whole)]
        return torch.tensor(values, dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> ItemParams:
        return cls.from_values(values.tolist())

    @classmethod
    def from_values(cls, values: list[float]) -> ItemParams:
        ratio, l1, l2, tokens_in, base, rows, merge, prune, keep, encoder_keep, flops_off, flops = values[:12]
        budget, budget_whole = values[12:14]
        schedule = AimSchedule(
            merge_ratio=ratio,
            prune_layers=(int(l1), int(l2)) if l1 >= 0 else None,
            merge_method=MERGE_METHODS[int(merge)],
            prune_method=PRUNE_METHODS[int(prune)],
            prune_keep=None if keep < 0 else keep,
            encoder_keep=encoder_keep,
        )
        budget_whole = bool(budget_whole)
        return cls(schedule, int(tokens_in), int(base), int(rows), flops_off, flops, budget, budget_whole)

    def with_budget(self, budget: tuple[float, bool] | None) -> ItemParams:
        """These parameters noting the budget level they were solved for (`level.budget_of`)."""
        return self if budget is None else replace(self, budget=budget[0], budget_whole=budget[1])

    @property
    def budget_of(self) -> tuple[float, bool] | None:
        return (self.budget, self.budget_whole) if self.budget > 0 else None


def field_name(modality: str) -> str:
    return f"aim_{modality}"
