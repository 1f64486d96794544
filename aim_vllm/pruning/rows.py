"""The rows of one step (which request, which position, prompt or generated, visual or text), and
the rows each layer actually computed, counted as the pruning forward runs (CPU bookkeeping).

`usage.aim.rows_per_layer` and `visual_tokens_kept` of a pruned prefill come from `RowCounts`, i.e.
from the rows that went into each layer's attention and the visual rows that left it, not from
the plan: a layer that computed more (or fewer) rows than the schedule says would show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aim_vllm.pruning.state import RequestStep


@dataclass(frozen=True)
class StepRows:
    """Per row of the step's input, in batch order ([N] each)."""

    request: torch.Tensor  # batch index of the row's request
    position: torch.Tensor  # index of the row in its request's sequence
    prompt: torch.Tensor  # bool: a prompt token (not one generated before a preemption)
    visual: torch.Tensor  # bool: one of its request's visual placeholder tokens
    prunable: torch.Tensor  # bool: a visual row pruning may drop (`RequestStep.prunable_spans`)

    @classmethod
    def of(cls, requests: Sequence[RequestStep], computed: list[int], scheduled: list[int]) -> StepRows:
        counts = torch.tensor(scheduled, dtype=torch.int64)
        request = torch.repeat_interleave(torch.arange(len(requests)), counts)
        position = torch.cat([torch.arange(c, c + q) for c, q in zip(computed, scheduled, strict=True)])
        num_prompt = torch.tensor([req.num_prompt for req in requests], dtype=torch.int64)
        visual = torch.zeros_like(position, dtype=torch.bool)
        prunable = torch.zeros_like(visual)
        for r, req in enumerate(requests):
            for mask, spans in ((visual, req.visual_spans), (prunable, req.prunable_spans)):
                for offset, length in spans:
                    mask |= (request == r) & (position >= offset) & (position < offset + length)
        return cls(request, position, position < num_prompt[request], visual, prunable)


class RowCounts:
    """Each layer's prompt rows entering attention and visual rows leaving it, per request."""

    def __init__(self, rows: StepRows, requests: Sequence[RequestStep]) -> None:
        self.rows, self.num_requests = rows, len(requests)
        self.index = {req.req_id: r for r, req in enumerate(requests)}
        self.entering: list[torch.Tensor] = []  # per layer: [R]
        self.leaving_visual: list[torch.Tensor] = []

    def enter(self, present: torch.Tensor) -> None:
        """`present`: indices (into the step's rows) of the rows this layer's attention gets."""
        prompt = present[self.rows.prompt[present]]
        self.entering.append(torch.bincount(self.rows.request[prompt], minlength=self.num_requests))

    def leave(self, present: torch.Tensor) -> None:
        """`present`: the rows that leave the layer (after its pruning, if any)."""
        visual = present[self.rows.prompt[present] & self.rows.visual[present]]
        self.leaving_visual.append(torch.bincount(self.rows.request[visual], minlength=self.num_requests))

    def of_request(self, req_id: str) -> tuple[list[int], list[int]]:
        """(prompt rows per layer, visual tokens leaving each layer) of a request of the step."""
        r = self.index[req_id]
        return [int(c[r]) for c in self.entering], [int(c[r]) for c in self.leaving_visual]
