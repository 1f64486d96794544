"""Per-step and per-request pruning bookkeeping (plain Python; no vLLM import).

A step is what vLLM's runner executes in one forward: each request contributes some rows
starting at the number of tokens it already has cached. Pruning happens only in a
step that holds a request's whole prompt (AIM ranks visual tokens with the text that follows
them); afterwards the request's `PruneRecord` says, for every layer, how many prompt tokens
that layer's KV cache lacks, which is all decoding needs (compacted KV keeps order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aim_vllm.core.token_counts import visual_kept_after_layer

PRUNED = "pruned"
SKIPPED_SPLIT = "skipped: prompt not prefilled in one step (chunked prefill or prefix cache hit)"


@dataclass(frozen=True)
class RequestStep:
    """A request of the current batch, as the pruning decoder needs to know it.

    Its rows in this step and its tokens already cached come from the attention metadata.
    """

    req_id: str
    num_prompt: int
    prune_layers: tuple[int, int] | None = None  # requested pruning window (l1, l2)
    visual_spans: tuple[tuple[int, int], ...] = ()  # (offset, length) of visual placeholders

    @property
    def num_visual(self) -> int:
        return sum(length for _, length in self.visual_spans)

    def is_visual(self, position: int) -> bool:
        return any(offset <= position < offset + length for offset, length in self.visual_spans)


@dataclass(frozen=True)
class StepContext:
    """What the runner knows about the batch of one forward, in batch order."""

    requests: tuple[RequestStep, ...]
    live_req_ids: frozenset[str]
    pruning_enabled: bool = True  # False when an engine feature rules pruning out
    disabled_reason: str = ""


@dataclass
class PruneRecord:
    """A request's pruning outcome, kept from its prefill to its last decode step.

    Attributes:
        status: PRUNED, or why the request ran unpruned.
        kept_after_layer: visual tokens leaving each layer.
        rows_per_layer: rows each layer's attention processed in the prefill (= its KV entries).
        missing: per layer, prompt tokens absent from that layer's KV cache.
    """

    status: str
    num_visual: int = 0
    kept_after_layer: list[int] = field(default_factory=list)
    rows_per_layer: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @classmethod
    def planned(cls, step: RequestStep, num_layers: int) -> PruneRecord:
        """The record a whole-prompt prefill of `step` will produce (counts are deterministic)."""
        assert step.prune_layers is not None
        kept = visual_kept_after_layer(step.num_visual, num_layers, step.prune_layers)
        entering = [step.num_visual, *kept[:-1]]  # visual tokens each layer processes
        text = step.num_prompt - step.num_visual
        return cls(
            status=PRUNED,
            num_visual=step.num_visual,
            kept_after_layer=kept,
            rows_per_layer=[text + v for v in entering],
            missing=[step.num_visual - v for v in entering],
        )
