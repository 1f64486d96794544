"""The decoder forward with AIM's progressive pruning and real removal (AIM §3.2; Design A).

Replaces `Qwen2Model.forward` / `LlamaModel.forward` (vllm==0.32.0) for batches that hold a
pruned request; otherwise the stock forward runs untouched. Per layer l:
1. each layer gets attention metadata for the rows it actually has (`attention.compaction`):
   compacted query ranges, shorter sequences, KV slots of the compacted layout;
2. QKV + RoPE + attention run on the present rows; the layer's rotated q/k are kept;
3. for a request whose schedule prunes at l (whole prompt in this step), PageRank importance
   over its present rows (`core.importance`) picks text + the top-k visual rows;
4. pruned rows are dropped right after attention: o_proj, MLP and every later layer run on the
   kept rows only; kept rows keep their original positions (RoPE ids).
Decode steps of a pruned request use the same per-layer metadata with no row drops: layer l
attends to exactly the prompt tokens it kept plus the generated ones.
Under tensor parallelism every rank keeps the same rows (`parallel.py`). Counts and row indices
are CPU bookkeeping; activations and the metadata's tensors stay on the engine's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aim_vllm.attention.backends import block_size, rebuild
from aim_vllm.attention.compaction import compact_common_metadata
from aim_vllm.compat import get_forward_context
from aim_vllm.core.importance import importance, select_kept_tokens
from aim_vllm.pruning.parallel import TensorParallel
from aim_vllm.pruning.rows import RowCounts, StepRows
from aim_vllm.pruning.state import PruneRecord, RequestStep, StepContext, decide


@dataclass
class BatchPlan:
    """Per layer, each request's rows (this step) and KV tokens missing; who prunes where."""

    steps: tuple[RequestStep, ...]
    rows: list[torch.Tensor]  # [num_layers] x [R] rows entering each layer
    missing: list[torch.Tensor]  # [num_layers] x [R] prompt tokens absent from each layer's KV
    pruning: dict[int, PruneRecord]  # batch index -> record of requests pruning in this step
    step_rows: StepRows | None  # what each row of the step is (None: no prefill prunes in this step)
    started: list[tuple[RequestStep, PruneRecord]]  # prefills that start in this step
    seq_lens: torch.Tensor  # [R] the step's sequence lengths (CPU)

    def changes_layout(self) -> bool:
        return bool(self.pruning) or any(bool(m.any()) for m in self.missing)


class PruningDecoder:
    """Runs a vLLM decoder stack with per-request pruning; remembers each request's outcome."""

    def __init__(
        self, num_layers: int, parallel: TensorParallel | None = None, unsupported: str = ""
    ) -> None:
        """`unsupported`: why this engine cannot prune at all (e.g. its attention backend)."""
        self.num_layers = num_layers
        self.parallel = parallel or TensorParallel()
        self.unsupported = unsupported
        self.records: dict[str, PruneRecord] = {}

    # -- planning ----------------------------------------------------------------------------
    def plan(self, step: StepContext, query_start_loc: torch.Tensor, seq_lens: torch.Tensor) -> BatchPlan:
        """Counts for every layer, from the step's requests and their records (no activations read).

        A batch where no request is pruned gets a plan without layers (it runs vLLM's stock forward).
        """
        self.records = {k: v for k, v in self.records.items() if k in step.live_req_ids}
        seq_lens = seq_lens.cpu()
        scheduled = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        computed = [int(s) - q for s, q in zip(seq_lens.tolist(), scheduled, strict=True)]
        started: list[tuple[RequestStep, PruneRecord]] = []
        for r, req in enumerate(step.requests):
            if req.req_id not in self.records or computed[r] == 0:  # a (re)started prefill decides
                record = decide(req, computed[r], scheduled[r], self.unsupported, self.num_layers)
                self.records[req.req_id] = record
                started.append((req, record))
        if not any(self.records[req.req_id].pruned for req in step.requests):
            return BatchPlan(step.requests, [], [], {}, None, started, seq_lens)
        rows = torch.tensor([scheduled] * self.num_layers, dtype=torch.int64)
        missing = torch.zeros_like(rows)
        pruning: dict[int, PruneRecord] = {}
        for r, req in enumerate(step.requests):
            record = self.records[req.req_id]
            if not record.pruned:
                continue
            missing[:, r] = torch.tensor(record.missing)
            if computed[r] == 0:  # this step is its prefill: rows shrink layer by layer
                # a recompute after preemption also carries the tokens generated so far
                rows[:, r] = torch.tensor(record.rows_per_layer) + (scheduled[r] - req.num_prompt)
                pruning[r] = record
        step_rows = StepRows.of(step.requests, computed, scheduled) if pruning else None  # decodes need none
        return BatchPlan(step.requests, list(rows), list(missing), pruning, step_rows, started, seq_lens)

    # -- forward ---------------------------------------------------------------------------
    def plan_step(self, model, step: StepContext) -> BatchPlan | None:
        """The plan of this forward, from the step's attention metadata (None in dummy runs)."""
        metadata = get_forward_context().attn_metadata
        first = model.layers[0].self_attn.attn.layer_name
        stock = metadata.get(first) if isinstance(metadata, dict) else None
        if stock is None:
            return None
        common = getattr(stock, "aim_common", None)
        if common is not None:
            num_reqs = common.num_reqs
            return self.plan(step, common.query_start_loc_cpu[: num_reqs + 1], common.seq_lens[:num_reqs])
        # a backend pruning cannot serve: its own metadata still gives the counts usage reports need
        num_reqs = len(step.requests)
        query_start_loc, seq_lens = getattr(stock, "query_start_loc", None), getattr(stock, "seq_lens", None)
        if not self.unsupported or query_start_loc is None or seq_lens is None:
            return None
        return self.plan(step, query_start_loc[: num_reqs + 1].cpu(), seq_lens[:num_reqs])

    def forward(
        self, model, positions: torch.Tensor, hidden: torch.Tensor, plan: BatchPlan
    ) -> tuple[torch.Tensor, RowCounts | None]:
        """Hidden states [N, d] of the decoder stack `model` (vLLM Qwen2Model/LlamaModel) under
        `plan`, and the rows each layer computed (None when no prefill prunes in this step)."""
        fc = get_forward_context()
        stock = fc.attn_metadata[model.layers[0].self_attn.attn.layer_name]
        layouts = {_layout_key(plan, 0): stock}  # layer 0 computes every scheduled row: the step's own
        counts = RowCounts(plan.step_rows, plan.steps) if plan.step_rows is not None else None
        idx = torch.arange(hidden.shape[0])  # rows present, as indices into the step's rows (CPU)
        present, residual = idx.to(hidden.device), None
        for layer_idx, layer in enumerate(model.layers):
            attn = layer.self_attn
            _install(fc, attn.attn.layer_name, compacted_metadata(stock, plan, layer_idx, layouts))
            if counts is not None:
                counts.enter(idx)
            # Adapted from Qwen2DecoderLayer.forward / Qwen2Attention.forward @ vllm==0.32.0
            if residual is None:
                residual, h = hidden, layer.input_layernorm(hidden)
            else:
                h, residual = layer.input_layernorm(hidden, residual)
            q, k, v = attn.qkv_proj(h)[0].split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
            q, k = attn.rotary_emb(positions[..., present], q, k)
            out = attn.attn(q, k, v)
            # AIM: begin -- drop pruned rows right after attention
            keep = self.select(plan, layer_idx, q, k, attn.attn, idx)
            if keep is not None:
                idx, keep = idx[keep], keep.to(hidden.device)
                out, residual, present = out[keep], residual[keep], present[keep]
            # AIM: end
            if counts is not None:
                counts.leave(idx)
            h, residual = layer.post_attention_layernorm(attn.o_proj(out)[0], residual)
            hidden = layer.mlp(h)
        hidden, _ = model.norm(hidden, residual)
        full = hidden.new_zeros(positions.shape[-1], hidden.shape[-1])
        full[present] = hidden  # pruned rows are visual, never sampled from
        return full, counts

    # -- selection ---------------------------------------------------------------------------
    def select(self, plan: BatchPlan, layer: int, q, k, attn_layer, idx: torch.Tensor):
        """Indices (into the current rows `idx`) that leave `layer`, or None when nobody prunes here."""
        pruners = {
            r: rec.kept_after_layer[layer]
            for r, rec in plan.pruning.items()
            if rec.kept_after_layer[layer] < _entering(rec, layer)
        }
        if not pruners:
            return None
        keep, start = [], 0
        for r, count in enumerate(plan.rows[layer].tolist()):
            local = torch.arange(count)
            if r in pruners:
                span = slice(start, start + count)
                local = self._kept_rows(plan, r, q[span], k[span], attn_layer, idx[span], pruners[r])
            keep.append(local + start)
            start += count
        return torch.cat(keep)

    def _kept_rows(self, plan: BatchPlan, r: int, q, k, attn_layer, rows: torch.Tensor, num_kept: int):
        """Local indices (CPU) kept among request r's `rows`: all text + the top visual prompt rows.

        Importance (PageRank, or the FastV baseline) runs over the prompt rows only (they come
        first), as in the request's original prefill; rows of tokens generated before a preemption
        (recomputed here, after the prompt) are kept. `q`/`k` hold this rank's heads; the scores
        use all ranks' heads.
        """
        prompt = int(plan.step_rows.prompt[rows].sum())
        is_visual = plan.step_rows.visual[rows[:prompt]].to(q.device)
        q_r = q[:prompt].view(prompt, attn_layer.num_heads, attn_layer.head_size)
        k_r = k[:prompt].view(prompt, attn_layer.num_kv_heads, attn_layer.head_size)
        method = plan.steps[r].schedule.prune_method
        scores = importance(method, q_r, k_r, is_visual, head_sum=self.parallel.head_sum)
        kept = self.parallel.agree(select_kept_tokens(scores, is_visual, num_kept)).cpu()
        return torch.cat([kept, torch.arange(prompt, len(rows))])


def _install(fc, layer_name: str, metadata) -> None:
    """Give one layer its own metadata and KV slots (replacing this step's dict entries only)."""
    fc.attn_metadata[layer_name] = metadata
    fc.slot_mapping[layer_name] = metadata.slot_mapping


def _entering(record: PruneRecord, layer: int) -> int:
    return record.num_visual if layer == 0 else record.kept_after_layer[layer - 1]


def _layout_key(plan: BatchPlan, layer: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(plan.rows[layer].tolist()), tuple(plan.missing[layer].tolist())


def compacted_metadata(stock, plan: BatchPlan, layer: int, layouts: dict):
    """Metadata of `layer`'s layout, built once per step per distinct layout (`layouts` caches them)."""
    key = _layout_key(plan, layer)
    if key not in layouts:
        common = compact_common_metadata(
            stock.aim_common, plan.rows[layer], plan.missing[layer], block_size(stock), plan.seq_lens
        )
        layouts[key] = rebuild(stock, common, slot=len(layouts) - 1)
    return layouts[key]
