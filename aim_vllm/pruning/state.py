"""Per-step and per-request pruning bookkeeping (plain Python; no vLLM import).

A step is what vLLM's runner executes in one forward: each request contributes some rows
starting at the number of tokens it already has cached. Pruning happens only in a step that
holds a request's whole prompt (AIM ranks visual tokens with the text that follows them);
afterwards the request's `PruneRecord` says, for every layer, how many prompt tokens that
layer's KV cache lacks, which is all decoding needs (compacted KV keeps the original order).

One decider: AIM's scheduler (`kv.scheduler`) gives every request that asks to prune a verdict
when it arrives (`scheduler_verdict`), and keeps a `WHOLE` request's prefill in one step and out
of the prefix cache. The verdict travels to the worker in the request's own
`SamplingParams.extra_args[PREFILL_KEY]`. With Design C, the scheduler decides each prefill's
record (`decide`) to allocate its KV blocks, and the record travels to the workers with the step
(`RECORDS_ATTR`): they prune exactly that. Only where nothing allocates by plan (no Design C) does
the worker call `decide` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aim_vllm.core.schedule import AimSchedule

PRUNED, NOT_PRUNED = "pruned", "not requested"
SKIPPED_SPLIT = "skipped: prompt not prefilled in one step (chunked prefill or prefix cache hit)"
SKIPPED_PROMPT_LOGPROBS = "skipped: prompt_logprobs need every prompt row at the last layer"
SKIPPED_TRAILING_VISUAL = "skipped: the prompt ends with visual tokens (AIM ranks them by later text)"
PREFILL_KEY = "aim_vllm_prefill"  # `SamplingParams.extra_args` key of AIM's scheduler's verdict
# ... and of its copy of each item's `ItemParams` values (vLLM sends the worker no data for an item
# that a prefix cache hit covers: `multimodal.utils.strip_covered_mm_data`)
ITEMS_KEY = "aim_vllm_items"
RECORDS_ATTR = "aim_prefill_records"  # `SchedulerOutput` attribute: {request id: PruneRecord}
WHOLE = "whole"  # the verdict: its prefill runs in one step, outside the prefix cache; it may prune


@dataclass(frozen=True)
class RequestStep:
    """A request of the current batch, as the pruning decoder needs to know it.

    Its rows in this step and its tokens already cached come from the attention metadata.
    """

    req_id: str
    num_prompt: int
    schedule: AimSchedule | None = None  # None: the request carries no AIM parameters
    visual_spans: tuple[tuple[int, int], ...] = ()  # (offset, length) of visual placeholders
    visual_tokens_in: int = 0  # visual tokens before merging
    skip_reason: str = ""  # a request option that rules pruning out (e.g. prompt_logprobs)
    encoder_flops: tuple[float, float] | None = None  # its items' (stock, executed) encoder FLOPs
    verdict: str | None = None  # AIM's scheduler's: WHOLE or "skipped: why" (None: no such verdict)
    budget: tuple[float, bool] | None = None  # a budget level's (budget, over the whole prefill)
    # (offset, length) of the placeholder rows that hold item embeddings, the rows pruning may
    # drop (None: all of `visual_spans`; a Qwen3-VL video's timestamp text is not among them)
    embed_spans: tuple[tuple[int, int], ...] | None = None

    @property
    def num_visual(self) -> int:
        return sum(length for _, length in self.visual_spans)

    @property
    def prunable_spans(self) -> tuple[tuple[int, int], ...]:
        return self.visual_spans if self.embed_spans is None else self.embed_spans

    @property
    def num_prunable(self) -> int:
        """Visual rows pruning may drop; the other `num_visual - num_prunable` are always kept."""
        return sum(length for _, length in self.prunable_spans)

    @property
    def prune_layers(self) -> tuple[int, int] | None:
        return None if self.schedule is None else self.schedule.prune_layers

    def is_visual(self, position: int) -> bool:
        return any(offset <= position < offset + length for offset, length in self.visual_spans)

    @property
    def ends_with_visual(self) -> bool:
        return any(offset + length >= self.num_prompt for offset, length in self.visual_spans)


@dataclass(frozen=True)
class KVBlocks:
    """The KV blocks each request of the step holds in each KV-cache group (the runner's block
    tables, i.e. what the scheduler allocated; vllm==0.32.0 `BlockTable.num_blocks_per_row`)."""

    group_of_layer: Mapping[str, int]  # attention layer name -> its KV-cache group
    block_size: tuple[int, ...]  # per group: tokens per block of its table
    held: tuple[np.ndarray, ...]  # per group: [R] blocks per request, in batch order

    def per_layer(self, layer_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens per block [L], blocks held [L, R]) of the given layers."""
        groups = [self.group_of_layer[name] for name in layer_names]
        return np.array([self.block_size[g] for g in groups]), np.stack([self.held[g] for g in groups])


@dataclass(frozen=True)
class StepContext:
    """What the runner knows about the batch of one forward, in batch order."""

    requests: tuple[RequestStep, ...]
    live_req_ids: frozenset[str]
    kv: KVBlocks | None = None  # None: the runner does not say (Model Runner V2)
    planned: Mapping[str, PruneRecord] = field(default_factory=dict)  # the scheduler's, this step


@dataclass
class PruneRecord:
    """A request's pruning outcome, kept from its prefill to its last decode step.

    Attributes:
        status: PRUNED, or why the request ran unpruned.
        kept_after_layer: visual tokens leaving each layer.
        rows_per_layer: rows each layer's attention processed in the prefill (= its KV entries).
        missing: per layer, prompt tokens absent from that layer's KV cache.
        prefills: how many times its prefill started (more than 1: recomputed after preemption;
            the counts are those of the latest).
    """

    status: str
    num_visual: int = 0
    kept_after_layer: list[int] = field(default_factory=list)
    rows_per_layer: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    prefills: int = 1

    @property
    def pruned(self) -> bool:
        return self.status == PRUNED

    @classmethod
    def unpruned(cls, status: str, req: RequestStep, num_layers: int) -> PruneRecord:
        """Every layer processes the whole prompt."""
        return cls(
            status,
            req.num_visual,
            [req.num_visual] * num_layers,
            [req.num_prompt] * num_layers,
            [0] * num_layers,
        )

    @classmethod
    def planned(cls, req: RequestStep, num_layers: int) -> PruneRecord:
        """The record a whole-prompt prefill of `req` produces (counts are deterministic): the
        schedule's counts of its prunable rows, plus its visual rows that are never pruned."""
        fixed = req.num_visual - req.num_prunable
        kept = [fixed + k for k in req.schedule.visual_kept(req.num_prunable, num_layers)]
        entering = [req.num_visual, *kept[:-1]]  # visual tokens each layer processes
        text = req.num_prompt - req.num_visual
        return cls(
            status=PRUNED,
            num_visual=req.num_visual,
            kept_after_layer=kept,
            rows_per_layer=[text + v for v in entering],
            missing=[req.num_visual - v for v in entering],
        )


def request_reason(req: RequestStep) -> str:
    """'' when `req` asks to prune and nothing about the request itself rules it out, else
    NOT_PRUNED (it does not ask) or "skipped: why" (prompt_logprobs, a prompt ending in visual rows)."""
    if req.prune_layers is None or req.num_prunable == 0:
        return NOT_PRUNED
    if req.skip_reason:
        return req.skip_reason
    return SKIPPED_TRAILING_VISUAL if req.ends_with_visual else ""


def scheduler_verdict(req: RequestStep, longest: int, step_budget: int) -> str | None:
    """AIM's scheduler's verdict on a new request (None: it does not prune, nothing to decide).

    `longest`: the most tokens a prefill of it can hold (its prompt plus max_tokens: a recompute
    after preemption carries the generated tokens); `step_budget`: the most tokens one step holds.
    """
    if request_reason(req):
        return None
    if longest > step_budget:
        return (
            f"skipped: its prompt with max_tokens ({longest} tokens) exceeds what one step may "
            f"prefill ({step_budget}: --max-num-batched-tokens, --long-prefill-token-threshold)"
        )
    return WHOLE


def decide(
    req: RequestStep, computed: int, scheduled: int, disabled_reason: str, num_layers: int
) -> PruneRecord:
    """What a request's prefill does; called on its first step (computed > 0 means a prefix cache hit).

    `disabled_reason`: why this engine cannot prune at all ('' when it can). Scheduler and worker
    call it with the same request, verdict and step, so they agree on every count.
    """
    own = request_reason(req)
    if own == NOT_PRUNED:
        return PruneRecord.unpruned(NOT_PRUNED, req, num_layers)
    verdict = req.verdict if req.verdict != WHOLE else ""
    reason = disabled_reason or own or verdict or ""
    if reason:
        return PruneRecord.unpruned(
            reason if reason.startswith("skipped") else f"skipped: {reason}", req, num_layers
        )
    if computed != 0 or scheduled < req.num_prompt:
        return PruneRecord.unpruned(SKIPPED_SPLIT, req, num_layers)
    return PruneRecord.planned(req, num_layers)
