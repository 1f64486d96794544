"""The decoder forward with AIM's progressive pruning and real removal (AIM §3.2; Design A).

Per step, one of three forwards (`AimModelMixin.forward` dispatches on the plan):
- stock: no request of the batch misses KV anywhere: vLLM's own (compiled) forward, untouched;
- compacted (`install`): some requests' KV lacks pruned prompt tokens (decodes of pruned requests)
  but no prefill prunes now: each layer gets attention metadata of its compacted sequences
  (`attention.compaction`), installed in the forward context, then vLLM's own (compiled)
  forward runs: attention reads each layer's metadata at run time;
- pruning (`forward`, eager): a prefill prunes in this step. Per layer l:
  1. the layer's metadata for the rows it actually has (compacted query ranges, shorter
     sequences, KV slots of the compacted layout);
  2. QKV + RoPE + attention run on the present rows; the layer's rotated q/k are kept;
  3. for a request whose schedule prunes at l (whole prompt in this step), PageRank importance
     over its present rows (`core.importance`) picks text + the top-k visual rows;
  4. pruned rows are dropped right after attention: o_proj, MLP and every later layer run on
     the kept rows only; kept rows keep their original positions (RoPE ids).
The layer is vLLM's Qwen2/LLaMA decoder layer, with two per-architecture differences read from
the model: Qwen3's per-head q/k RMSNorm before RoPE (when the attention has `q_norm`/`k_norm`),
and `additions` (Qwen3-VL's DeepStack: [N, d] per layer i < L, added to the hidden states after
layer i, as vLLM's `Qwen3LLMModel.forward` does). No request may prune before the last addition
(`first_layer`): its pruned rows would still need theirs.
Layer l of a pruned request then attends to exactly the prompt tokens it kept plus the generated
ones. Under tensor parallelism every rank keeps the same rows (`parallel.py`). Counts and row
indices are CPU bookkeeping; activations and the metadata's tensors stay on the engine's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from aim_vllm.attention.backends import block_size, rebuild
from aim_vllm.attention.compaction import compact_common_metadata
from aim_vllm.compat import get_forward_context
from aim_vllm.core.importance import importance, select_kept_tokens
from aim_vllm.pruning.parallel import TensorParallel
from aim_vllm.pruning.rows import RowCounts, StepRows
from aim_vllm.pruning.state import KVBlocks, PruneRecord, RequestStep, StepContext, decide


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
    # started request -> (tokens its blocks are for: this step's sequence length, blocks per layer)
    kv_held: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    kv_block_size: int | None = None  # tokens per block of `kv_held` (None: the runner does not say)

    def changes_layout(self) -> bool:
        return bool(self.pruning) or any(bool(m.any()) for m in self.missing)

    @property
    def num_tokens(self) -> int:
        """Rows of the step's input (a CUDA-graph batch may be padded past them)."""
        return int(self.rows[0].sum())


class PruningDecoder:
    """Runs a vLLM decoder stack with per-request pruning; remembers each request's outcome."""

    def __init__(
        self,
        num_layers: int,
        parallel: TensorParallel | None = None,
        unsupported: str = "",
        first_layer: int = 0,
    ) -> None:
        """`unsupported`: why this engine cannot prune at all (e.g. its attention backend);
        `first_layer`: the earliest layer rows may be dropped after (Qwen3-VL: its DeepStack levels)."""
        self.num_layers = num_layers
        self.parallel = parallel or TensorParallel()
        self.unsupported = unsupported
        self.first_layer = first_layer
        self.records: dict[str, PruneRecord] = {}

    # -- planning ----------------------------------------------------------------------------
    def plan(
        self,
        step: StepContext,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        layer_names: tuple[str, ...] = (),
    ) -> BatchPlan:
        """Counts for every layer, from the step's requests and their records (no activations read).

        A batch where no request is pruned gets a plan without layers (it runs vLLM's stock forward).
        `layer_names`: the decoder's attention layers, to read the KV blocks each holds (`step.kv`).
        """
        self.records = {k: v for k, v in self.records.items() if k in step.live_req_ids}
        seq_lens = seq_lens.cpu()
        scheduled = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
        computed = [int(s) - q for s, q in zip(seq_lens.tolist(), scheduled, strict=True)]
        started: list[tuple[RequestStep, PruneRecord]] = []
        for r, req in enumerate(step.requests):
            if req.req_id not in self.records or computed[r] == 0:  # a (re)started prefill decides
                record = self._prefill_record(req, computed[r], scheduled[r], step)
                earlier = self.records.get(req.req_id)  # a recompute after preemption
                record.prefills = 1 if earlier is None else earlier.prefills + 1
                self.records[req.req_id] = record
                started.append((req, record))
        kv = KVHeld.of(step.kv, layer_names, step.requests, seq_lens)
        if not any(self.records[req.req_id].pruned for req in step.requests):
            if kv is not None:
                kv.check()
            return BatchPlan(step.requests, [], [], {}, None, started, seq_lens, *_started_kv(kv, started))
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
        if kv is not None:
            kv.check(missing)
        step_rows = StepRows.of(step.requests, computed, scheduled) if pruning else None  # decodes need none
        return BatchPlan(
            step.requests,
            list(rows),
            list(missing),
            pruning,
            step_rows,
            started,
            seq_lens,
            *_started_kv(kv, started),
        )

    def _prefill_record(
        self, req: RequestStep, computed: int, scheduled: int, step: StepContext
    ) -> PruneRecord:
        """The record AIM's scheduler decided for this prefill and allocated KV blocks by (one
        decider: this worker prunes exactly it); the worker's own decision only where no plan
        allocates (no Design C)."""
        planned = step.planned.get(req.req_id)
        if planned is None:
            return decide(req, computed, scheduled, self.unsupported, self.num_layers)
        if planned.pruned and (self.unsupported or computed != 0 or scheduled < req.num_prompt):
            raise RuntimeError(  # the scheduler decided from this very step: a bug, not a disagreement
                f"aim-vllm: request {req.req_id} was planned pruned for a step it does not fill "
                f"({computed} cached, {scheduled} of {req.num_prompt} prompt tokens scheduled)"
            )
        return replace(planned)  # this worker's copy (it counts prefills)

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
            names = tuple(layer.self_attn.attn.layer_name for layer in model.layers)
            return self.plan(
                step, common.query_start_loc_cpu[: num_reqs + 1], common.seq_lens[:num_reqs], names
            )
        # a backend pruning cannot serve: its own metadata still gives the counts usage reports need
        num_reqs = len(step.requests)
        query_start_loc, seq_lens = getattr(stock, "query_start_loc", None), getattr(stock, "seq_lens", None)
        if not self.unsupported or query_start_loc is None or seq_lens is None:
            pruned = [r.req_id for r in step.requests if self._pruned(r.req_id)]
            if pruned:  # the stock forward would read their compacted KV as if it were whole
                raise RuntimeError(
                    f"aim-vllm: pruned request {pruned[0]} in a step whose attention metadata was "
                    "not built by AIM's backend: its compacted KV cannot be read"
                )
            return None
        return self.plan(step, query_start_loc[: num_reqs + 1].cpu(), seq_lens[:num_reqs])

    def install(self, model, plan: BatchPlan) -> None:
        """Give every layer of `model` the metadata of its compacted sequences (`plan` drops no
        rows in this step), in this step's forward context, for vLLM's own forward to read."""
        fc = get_forward_context()
        layouts = Layouts(plan)
        for layer_idx, layer in enumerate(model.layers):
            name = layer.self_attn.attn.layer_name
            _install(fc, name, layouts.metadata(fc.attn_metadata[name], layer_idx))

    def _pruned(self, req_id: str) -> bool:
        record = self.records.get(req_id)
        return record is not None and record.pruned

    def forward(
        self,
        model,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        plan: BatchPlan,
        additions: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, RowCounts]:
        """Hidden states [N, d] of the decoder stack `model` (vLLM Qwen2Model/LlamaModel/Qwen3Model)
        under `plan`, where a prefill prunes, and the rows each layer computed. `additions`: per
        layer i from 0, rows [>= N, d] added to the hidden states after layer i (DeepStack)."""
        fc = get_forward_context()
        # each layer's step metadata: its KV-cache group's block table (one group: all the same)
        stocks = [fc.attn_metadata[layer.self_attn.attn.layer_name] for layer in model.layers]
        layouts = Layouts(plan)
        counts = RowCounts(plan.step_rows, plan.steps)
        padded = positions.shape[-1]
        hidden, positions = hidden[: plan.num_tokens], positions[..., : plan.num_tokens]
        idx = torch.arange(hidden.shape[0])  # rows present, as indices into the step's rows (CPU)
        present, residual = idx.to(hidden.device), None
        for layer_idx, layer in enumerate(model.layers):
            attn = layer.self_attn
            _install(fc, attn.attn.layer_name, layouts.metadata(stocks[layer_idx], layer_idx))
            counts.enter(idx)
            # Adapted from Qwen2DecoderLayer.forward / Qwen2Attention.forward @ vllm==0.32.0
            if residual is None:
                residual, h = hidden, layer.input_layernorm(hidden)
            else:
                h, residual = layer.input_layernorm(hidden, residual)
            q, k, v = attn.qkv_proj(h)[0].split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
            q, k = _qk_norm(attn, q, k)
            q, k = attn.rotary_emb(positions[..., present], q, k)
            out = attn.attn(q, k, v)
            # AIM: begin -- drop pruned rows right after attention
            keep = self.select(plan, layer_idx, q, k, attn.attn, idx)
            if keep is not None:
                idx, keep = idx[keep], keep.to(hidden.device)
                out, residual, present = out[keep], residual[keep], present[keep]
            # AIM: end
            counts.leave(idx)
            h, residual = layer.post_attention_layernorm(attn.o_proj(out)[0], residual)
            hidden = layer.mlp(h)
            if additions is not None and layer_idx < len(additions):  # as Qwen3LLMModel.forward
                hidden = hidden + additions[layer_idx][present]
        hidden, _ = model.norm(hidden, residual)
        full = hidden.new_zeros(padded, hidden.shape[-1])
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
        if layer < self.first_layer:  # the scheduler and the processor never plan this
            raise RuntimeError(
                f"aim-vllm: a request prunes after layer {layer}, before layer {self.first_layer} "
                "(the last layer whose output gets additions its pruned rows would need)"
            )
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
        """Local indices (CPU) kept among request r's `rows`: all text + the top visual prompt rows
        (of `num_kept` visual rows, those pruning may not drop included: a Qwen3-VL video's
        timestamp text).

        Importance (PageRank, or the FastV baseline) runs over the prompt rows only (they come
        first), as in the request's original prefill; rows of tokens generated before a preemption
        (recomputed here, after the prompt) are kept. `q`/`k` hold this rank's heads; the scores
        use all ranks' heads.
        """
        prompt = int(plan.step_rows.prompt[rows].sum())
        fixed = plan.step_rows.visual & ~plan.step_rows.prunable  # visual rows never pruned
        num_kept -= int(fixed[rows[:prompt]].sum())
        is_visual = plan.step_rows.prunable[rows[:prompt]].to(q.device)
        q_r = q[:prompt].view(prompt, attn_layer.num_heads, attn_layer.head_size)
        k_r = k[:prompt].view(prompt, attn_layer.num_kv_heads, attn_layer.head_size)
        method = plan.steps[r].schedule.prune_method
        scores = importance(method, q_r, k_r, is_visual, head_sum=self.parallel.head_sum)
        kept = self.parallel.agree(select_kept_tokens(scores, is_visual, num_kept)).cpu()
        return torch.cat([kept, torch.arange(prompt, len(rows))])


def _qk_norm(attn, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3's per-head RMSNorm of q and k before RoPE, as in `Qwen3Attention.forward` @
    vllm==0.32.0; q and k as they are for attentions without `q_norm` (Qwen2, LLaMA)."""
    if not hasattr(attn, "q_norm"):
        return q, k
    q = attn.q_norm(q.view(*q.shape[:-1], q.shape[-1] // attn.head_dim, attn.head_dim)).view(q.shape)
    k = attn.k_norm(k.view(*k.shape[:-1], k.shape[-1] // attn.head_dim, attn.head_dim)).view(k.shape)
    return q, k


def _install(fc, layer_name: str, metadata) -> None:
    """Give one layer its own metadata and KV slots (replacing this step's dict entries only)."""
    fc.attn_metadata[layer_name] = metadata
    fc.slot_mapping[layer_name] = metadata.slot_mapping


def _entering(record: PruneRecord, layer: int) -> int:
    return record.num_visual if layer == 0 else record.kept_after_layer[layer - 1]


class Layouts:
    """Per step, the metadata of each distinct layout (step metadata, rows, KV missing), built once.

    A layer whose rows and KV are the step's own uses its step metadata as it is (layer 0
    always); builders that keep state per layout get one per layout (`backends.rebuild`).
    """

    def __init__(self, plan: BatchPlan) -> None:
        self.plan = plan
        self.built: dict[tuple, object] = {}
        self.per_builder: dict[int, int] = {}  # id(builder) -> layouts built with it this step

    def metadata(self, stock, layer: int):
        rows, missing = self.plan.rows[layer], self.plan.missing[layer]
        if bool(torch.equal(rows, self.plan.rows[0])) and not bool(missing.any()):
            return stock
        key = (id(stock), tuple(rows.tolist()), tuple(missing.tolist()))
        if key not in self.built:
            common = compact_common_metadata(
                stock.aim_common, rows, missing, block_size(stock), self.plan.seq_lens
            )
            slot = self.per_builder.get(id(stock.aim_builder), 0)
            self.per_builder[id(stock.aim_builder)] = slot + 1
            self.built[key] = rebuild(stock, common, slot=slot)
        return self.built[key]


class KVHeld:
    """The KV blocks each layer holds per request this step, checked against what it stores
    (NumPy: it runs on every step of an AIM model, pruned or not)."""

    def __init__(self, block_size: np.ndarray, held: np.ndarray, seq_lens: torch.Tensor, requests) -> None:
        self.block_size, self.held = block_size, held  # [L], [L, R]
        self.seq_lens, self.requests = seq_lens.numpy().astype(np.int64), requests

    @classmethod
    def of(cls, kv: KVBlocks | None, layer_names, requests, seq_lens: torch.Tensor) -> KVHeld | None:
        if kv is None or not layer_names:
            return None
        return cls(*kv.per_layer(layer_names), seq_lens, requests)

    def check(self, missing: torch.Tensor | None = None) -> None:
        """Raise if a layer's blocks cannot hold the `seq_len - missing` tokens it stores: the
        scheduler and this worker disagree on pruning, and the tokens past its blocks would go to
        vLLM's null block. `missing`: [layers, R] (None: nothing missing)."""
        capacity = self.held * self.block_size[:, None]
        stored = self.seq_lens[None, :] - (np.zeros_like(capacity) if missing is None else missing.numpy())
        short = np.argwhere(capacity < stored)
        if len(short):
            layer, r = (int(i) for i in short[0])
            raise RuntimeError(
                f"aim-vllm: request {self.requests[r].req_id} holds KV for {int(capacity[layer, r])} "
                f"tokens in layer {layer} but stores {int(stored[layer, r])}: "
                "the scheduler and the worker disagree on what it prunes"
            )


def _started_kv(kv: KVHeld | None, started) -> tuple[dict[str, list[int]], int | None]:
    """Blocks per layer held by each request whose prefill starts (for `usage.aim`)."""
    if kv is None:
        return {}, None
    index = {req.req_id: r for r, req in enumerate(kv.requests)}
    held = {
        req.req_id: (int(kv.seq_lens[index[req.req_id]]), kv.held[:, index[req.req_id]].tolist())
        for req, _ in started
    }
    return held, int(kv.block_size[0])
