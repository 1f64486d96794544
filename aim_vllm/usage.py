"""Per-request AIM statistics: computed in the worker, reported in the response's `usage.aim`.

The worker (tensor-parallel rank 0 only) writes one small JSON file per request whose prefill
starts (visual tokens before and after merging, rows, KV entries and blocks per layer, FLOPs) into
`$AIM_VLLM_STATS_DIR`; the API server's
`AimUsageMiddleware` takes it out when the response for that request id leaves (vLLM's engine
request id is the response id plus "-" and 8 random characters). Plain Python, no vLLM import.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aim_vllm.core.flops import LLMShape, executed_prefill_flops, prefill_flops
from aim_vllm.kv.plan import cdiv

STATS_DIR_ENV = "AIM_VLLM_STATS_DIR"
_ENGINE_SUFFIX_LEN = 9  # "-" + 8 random characters (vllm==0.32.0 InputProcessor.assign_request_id)


@dataclass(frozen=True)
class RequestStats:
    """What AIM did to one request, for `usage.aim` and metrics."""

    merge_ratio: float
    prune_layers: list[int] | None
    pruning: str
    text_tokens: int
    visual_tokens_in: int
    visual_tokens_merged: int
    visual_tokens_kept: dict[str, int]  # layer -> visual tokens leaving it, where pruning happens
    rows_per_layer: list[int]  # rows each layer computed in the prefill (= its prompt KV entries)
    llm_prefill_flops: float  # executed convention
    llm_prefill_flops_off: float
    flops_ratio: float
    # KV blocks each layer held once the prefill was scheduled (the runner's block tables; None
    # where the runner does not say), and blocks saved against every layer holding the prompt
    kv_block_size: int | None = None
    kv_blocks_per_layer: list[int] | None = None
    kv_blocks_saved: int | None = None
    # kept fraction inside the vision encoder (`core.encoder_merge`; 1.0: the encoder as it is); the
    # FLOPs of the encoder passes behind the request's items at that keep and stock
    # (`core.encoder_flops` on each item's frames / crops / grid; None where not known), their
    # ratio (1.0 whenever the stock tower ran), and the whole prefill's: encoder + LLM over AIM off
    encoder_keep: float = 1.0
    encoder_flops: float | None = None
    encoder_flops_off: float | None = None
    encoder_flops_ratio: float | None = None
    prefill_flops_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_stats(
    *,
    merge_ratio: float,
    prune_layers: tuple[int, int] | None,
    pruning: str,
    num_prompt: int,
    visual_tokens_in: int,
    visual_tokens_merged: int,
    kept_after_layer: list[int],
    rows_per_layer: list[int],
    shape: LLMShape,
    kv_blocks_per_layer: list[int] | None = None,
    kv_block_size: int | None = None,
    encoder_keep: float = 1.0,
    encoder_flops: tuple[float, float] | None = None,
) -> RequestStats:
    """Stats of a prefill whose per-layer counts are known."""
    text = num_prompt - visual_tokens_merged
    entering = [visual_tokens_merged, *kept_after_layer[:-1]]
    kept = {
        str(layer): k for layer, (k, e) in enumerate(zip(kept_after_layer, entering, strict=True)) if k < e
    }
    off = prefill_flops([text + visual_tokens_in] * shape.num_layers, shape)
    executed = executed_prefill_flops(
        text + visual_tokens_merged, [text + k for k in kept_after_layer], shape
    )
    return RequestStats(
        merge_ratio=merge_ratio,
        prune_layers=list(prune_layers) if prune_layers else None,
        pruning=pruning,
        text_tokens=text,
        visual_tokens_in=visual_tokens_in,
        visual_tokens_merged=visual_tokens_merged,
        visual_tokens_kept=kept,
        rows_per_layer=list(rows_per_layer),
        llm_prefill_flops=executed,
        llm_prefill_flops_off=off,
        flops_ratio=executed / off,
        **kv_usage(num_prompt, kv_blocks_per_layer, kv_block_size),
        **encoder_usage(encoder_keep, encoder_flops, executed, off),
    )


def encoder_usage(
    keep: float, flops: tuple[float, float] | None, llm_executed: float, llm_off: float
) -> dict[str, Any]:
    """The `encoder_*` and `prefill_flops_ratio` fields; `flops`: (stock, executed) encoder FLOPs."""
    if flops is None:
        return {"encoder_keep": keep, "encoder_flops_ratio": 1.0 if keep >= 1.0 else None}
    stock, executed = flops
    return {
        "encoder_keep": keep,
        "encoder_flops": executed,
        "encoder_flops_off": stock,
        "encoder_flops_ratio": executed / stock,
        "prefill_flops_ratio": (executed + llm_executed) / (stock + llm_off),
    }


def kv_usage(num_prompt: int, held: list[int] | None, block_size: int | None) -> dict[str, Any]:
    """The `kv_*` fields of a prefill that left `held` blocks per layer."""
    if held is None or not block_size:
        return {}
    full = cdiv(num_prompt, block_size)  # every layer holding the whole prompt (Design A)
    return {
        "kv_block_size": block_size,
        "kv_blocks_per_layer": list(held),
        "kv_blocks_saved": full * len(held) - sum(held),
    }


def external_request_id(engine_request_id: str) -> str:
    """The API-level id (the response's `id`) of an engine request id."""
    return engine_request_id[:-_ENGINE_SUFFIX_LEN]


class StatsStore:
    """A directory of `<response id>.json` files shared by the engine's processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_env(cls) -> StatsStore | None:
        root = os.environ.get(STATS_DIR_ENV)
        return cls(root) if root else None

    def _path(self, request_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request_id)
        return self.root / f"{safe}.json"

    def put(self, request_id: str, stats: RequestStats) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(request_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one writer per file name, even across processes
        tmp.write_text(json.dumps(stats.to_dict()))
        tmp.replace(path)  # readers never see a partial file

    def pop(self, request_id: str) -> dict[str, Any] | None:
        path = self._path(request_id)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        path.unlink(missing_ok=True)
        return data

    def sweep(self, max_age_s: float = 600.0) -> None:
        """Delete files nobody collected (e.g. the client disconnected)."""
        cutoff = time.time() - max_age_s
        for path in self.root.glob("*"):  # stats files and temporaries of a writer that died
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue


class UsageReporter:
    """Writes the stats of every prefill that starts (worker side)."""

    def __init__(self, shape: LLMShape, store: StatsStore | None) -> None:
        self.shape, self.store = shape, store

    def report(self, started, counts=None, kv_held=None, kv_block_size: int | None = None) -> None:
        """`started`: (RequestStep, PruneRecord) pairs of prefills starting in this step.

        `counts` (`pruning.rows.RowCounts`, when the pruning forward ran): a pruned request's rows
        per layer and visual tokens kept are the ones counted there, i.e. what its layers computed.
        An unpruned request's layers compute its whole prompt (vLLM's own forward, possibly over
        several steps): its record says so. `kv_held`: request id -> KV blocks per layer it holds.
        """
        if self.store is None:
            return
        for req, record in started:
            if req.num_visual == 0:
                continue
            rows, kept = record.rows_per_layer, record.kept_after_layer
            if counts is not None and record.pruned:
                rows, kept = counts.of_request(req.req_id)
            schedule = req.schedule
            stats = request_stats(
                merge_ratio=schedule.merge_ratio if schedule else 1.0,
                prune_layers=schedule.prune_layers if schedule else None,
                pruning=record.status,
                num_prompt=req.num_prompt,
                visual_tokens_in=req.visual_tokens_in,
                visual_tokens_merged=req.num_visual,
                kept_after_layer=kept,
                rows_per_layer=rows,
                shape=self.shape,
                kv_blocks_per_layer=(kv_held or {}).get(req.req_id),
                kv_block_size=kv_block_size,
                encoder_keep=schedule.encoder_keep if schedule else 1.0,
                encoder_flops=req.encoder_flops,
            )
            self.store.put(external_request_id(req.req_id), stats)
