"""Per-request AIM statistics: computed in the worker, reported in the response's `usage.aim`.

The worker (tensor-parallel rank 0 only) writes one small JSON file per request whose prefill
starts (visual tokens before and after merging, rows, KV entries and blocks per layer, FLOPs) into
`$AIM_VLLM_STATS_DIR`; the API server's
`AimUsageMiddleware` takes it out when the response for that request id leaves (vLLM's engine
request id is the response id plus "-" and 8 random characters). Plain Python, no vLLM import.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aim_vllm.core.flops import LLMShape, executed_prefill_flops, prefill_flops
from aim_vllm.kv.plan import cdiv

logger = logging.getLogger(__name__)

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
    prefills: int = 1  # times the prefill ran: 2 or more after preemption (the figures: the last)
    # KV blocks each layer held once the prefill was scheduled (the runner's block tables; None
    # where the runner does not say), and blocks saved against every layer holding all the tokens
    # of that step (`kv_usage`)
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
    # a budget level's budget, and whether the prefill stayed within it (its FLOPs ratio: the whole
    # prefill's for `budget:<b>,encoder:auto` where known, else the LLM's); None without a budget
    budget: float | None = None
    budget_met: bool | None = None

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
    kv_held: tuple[int, list[int]] | None = None,
    kv_block_size: int | None = None,
    encoder_keep: float = 1.0,
    encoder_flops: tuple[float, float] | None = None,
    prefills: int = 1,
    budget: tuple[float, bool] | None = None,
) -> RequestStats:
    """Stats of a prefill whose per-layer counts are known; `budget`: (budget, whole prefill)."""
    text = num_prompt - visual_tokens_merged
    entering = [visual_tokens_merged, *kept_after_layer[:-1]]
    kept = {
        str(layer): k for layer, (k, e) in enumerate(zip(kept_after_layer, entering, strict=True)) if k < e
    }
    off = prefill_flops([text + visual_tokens_in] * shape.num_layers, shape)
    executed = executed_prefill_flops(
        text + visual_tokens_merged, [text + k for k in kept_after_layer], shape
    )
    encoder = encoder_usage(encoder_keep, encoder_flops, executed, off)
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
        prefills=prefills,
        **kv_usage(kv_held, kv_block_size),
        **encoder,
        **budget_usage(budget, executed / off, encoder.get("prefill_flops_ratio")),
    )


def budget_usage(budget: tuple[float, bool] | None, llm_ratio: float, prefill_ratio: float | None) -> dict:
    """The `budget` and `budget_met` fields (the ratio compared: see `RequestStats`)."""
    if budget is None:
        return {}
    value, whole = budget
    ratio = prefill_ratio if whole and prefill_ratio is not None else llm_ratio
    return {"budget": value, "budget_met": ratio <= value + 1e-9}


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


def kv_usage(held: tuple[int, list[int]] | None, block_size: int | None) -> dict[str, Any]:
    """The `kv_*` fields of a prefill whose layers hold `held` = (tokens, blocks per layer): blocks
    saved against every layer holding all those tokens (Design A). The tokens are the step's
    sequence length: a recompute after preemption holds its generated tokens too, and the first
    chunk of a chunked prefill only that chunk, so neither counts blocks it never needed as saved."""
    if held is None or not block_size:
        return {}
    tokens, held = held
    full = cdiv(tokens, block_size)
    return {
        "kv_block_size": block_size,
        "kv_blocks_per_layer": list(held),
        "kv_blocks_saved": full * len(held) - sum(held),
    }


def external_request_id(engine_request_id: str) -> str:
    """The API-level id (the response's `id`) of an engine request id."""
    return engine_request_id[:-_ENGINE_SUFFIX_LEN]


class StatsStore:
    """A directory of `<response id>.json` files shared by the engine's processes, and the
    engine's own note (`_engine.json`, never swept): why it cannot prune ('' when it can)."""

    ENGINE_FILE = "_engine.json"

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
        self._write(self._path(request_id), stats.to_dict())

    def put_engine_pruning_off(self, reason: str) -> None:
        """Written once by the model (rank 0) when it is built, before the server takes requests."""
        self._write(self.root / self.ENGINE_FILE, {"pruning_off": reason})

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one writer per file name, even across processes
        tmp.write_text(json.dumps(data))
        tmp.replace(path)  # readers never see a partial file

    def engine_pruning_off(self) -> str:
        """Why the engine cannot prune ('' when it can, or when it has not said)."""
        try:
            return str(json.loads((self.root / self.ENGINE_FILE).read_text()).get("pruning_off") or "")
        except (FileNotFoundError, json.JSONDecodeError, AttributeError):
            return ""

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
            if path.name == self.ENGINE_FILE:
                continue
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
        per layer and visual tokens kept are the ones counted there, i.e. what its layers computed;
        where they differ from its record (the plan its KV blocks were sized by), `pruning` says so
        and the error is logged. An unpruned request's layers compute its whole prompt (vLLM's own
        forward, possibly over several steps): its record says so. `kv_held`: request id -> (tokens,
        KV blocks per layer it holds).
        """
        if self.store is None:
            return
        for req, record in started:
            if req.num_visual == 0:
                continue
            rows, kept, status = record.rows_per_layer, record.kept_after_layer, record.status
            if counts is not None and record.pruned:
                rows, kept, status = _counted(req.req_id, record, *counts.of_request(req.req_id))
            schedule = req.schedule
            stats = request_stats(
                merge_ratio=schedule.merge_ratio if schedule else 1.0,
                prune_layers=schedule.prune_layers if schedule else None,
                pruning=status,
                num_prompt=req.num_prompt,
                visual_tokens_in=req.visual_tokens_in,
                visual_tokens_merged=req.num_visual,
                kept_after_layer=kept,
                rows_per_layer=rows,
                shape=self.shape,
                kv_held=(kv_held or {}).get(req.req_id),
                kv_block_size=kv_block_size,
                encoder_keep=schedule.encoder_keep if schedule else 1.0,
                encoder_flops=req.encoder_flops,
                prefills=record.prefills,
                budget=req.budget,
            )
            self.store.put(external_request_id(req.req_id), stats)


def _counted(req_id: str, record, rows: list[int], kept: list[int]) -> tuple[list[int], list[int], str]:
    """The counted (rows, kept, status): `record.status`, or an error naming the first layer
    whose counted rows or kept visual tokens differ from the record's plan (`PruneRecord.planned`),
    logged. Counts of another number of layers cannot be reported: the record's, with the error."""
    planned = list(zip(record.rows_per_layer, record.kept_after_layer, strict=True))
    counted = list(zip(rows, kept, strict=True))
    if counted == planned:
        return rows, kept, record.status
    if len(counted) != len(planned):
        rows, kept = record.rows_per_layer, record.kept_after_layer
        message = f"error: {len(counted)} layers counted, {len(planned)} planned"
    else:
        layer = next(i for i, (c, p) in enumerate(zip(counted, planned, strict=True)) if c != p)
        message = (
            f"error: layer {layer} computed {counted[layer][0]} rows and kept {counted[layer][1]} "
            f"visual tokens, its plan {planned[layer][0]} and {planned[layer][1]}"
        )
    logger.error("aim-vllm: request %s: %s", req_id, message)
    return rows, kept, message
