"""Builds the `StepContext` of a forward from vLLM's model runner (vllm==0.32.0).

The V1 runner (`GPUModelRunner`) through the `_model_forward` patch (`build_step_context`);
Model Runner V2 through AIM's `ModelState` (`models/model_state.py`), from the same request data.

Reads, in batch order, each request's prompt length, visual placeholder spans
(`CachedRequestState.mm_features[i].mm_position`) and AIM parameters (the per-item
`aim_<modality>` field the processor attached), and the KV blocks it holds in each group.
Engine settings that rule pruning out are checked once, when the model is built (`pruning.support`).
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.pruning.state import (
    ITEMS_KEY,
    PREFILL_KEY,
    SKIPPED_PROMPT_LOGPROBS,
    KVBlocks,
    RequestStep,
    StepContext,
)

logger = logging.getLogger(__name__)


def build_step_context(runner) -> StepContext:
    batch = runner.input_batch
    steps = tuple(
        _cached_request_step(req_id, runner.requests[req_id]) for req_id in batch.req_ids[: batch.num_reqs]
    )
    planned = getattr(runner, "aim_prefill_records", None) or {}  # `patches` item 1: this step's
    return StepContext(steps, frozenset(runner.requests), _kv_blocks(runner, batch.num_reqs), planned)


def _kv_blocks(runner, num_reqs: int) -> KVBlocks:
    """Blocks held per group and request (`MultiGroupBlockTable`, `KVCacheConfig.kv_cache_groups`)."""
    groups = runner.kv_cache_config.kv_cache_groups
    tables = runner.input_batch.block_table.block_tables
    return KVBlocks(
        {name: g for g, group in enumerate(groups) for name in group.layer_names},
        tuple(table.block_size for table in tables),
        tuple(table.num_blocks_per_row[:num_reqs].astype(np.int64) for table in tables),
    )


def _cached_request_step(req_id: str, state) -> RequestStep:
    """From the V1 runner's `CachedRequestState`."""
    return request_step(req_id, state.num_prompt_tokens, state.mm_features, state.sampling_params)


def request_step(req_id: str, num_prompt: int, mm_features, sampling_params) -> RequestStep:
    """A request's spans and AIM parameters (from its items' `aim_<modality>` fields), and AIM's
    scheduler's verdict (`state.PREFILL_KEY` in its `SamplingParams.extra_args`).

    Both runners hold the same request data (V1 `CachedRequestState`, V2 `NewRequestData`), and so
    does the scheduler (`vllm.v1.request.Request`).
    """
    extra = getattr(sampling_params, "extra_args", None) or {}
    copies = extra.get(ITEMS_KEY) or []
    spans, params, embeds = [], [], []
    for index, feature in enumerate(mm_features):
        spans.append((feature.mm_position.offset, feature.mm_position.length))
        embeds += _embed_spans(feature.mm_position)
        item, name = feature.data, field_name(feature.modality)
        if item is not None and name in item:
            params.append(ItemParams.from_tensor(item[name].data))
        else:  # vLLM leaves an item covered by a prefix cache hit without its data (the copy then)
            copy = copies[index] if index < len(copies) else None
            params.append(ItemParams.from_values(copy) if copy else None)
    known = [p for p in params if p is not None]
    tokens_in = sum(p.tokens_in if p else length for p, (_, length) in zip(params, spans, strict=True))
    skip = (
        SKIPPED_PROMPT_LOGPROBS
        if sampling_params is not None and sampling_params.prompt_logprobs is not None
        else ""
    )
    schedule = known[0].schedule if known else None
    encoder_flops = None  # (stock, executed), known when every item carries its count
    if known and len(known) == len(params) and all(p.encoder_flops_off > 0 for p in known):
        encoder_flops = (sum(p.encoder_flops_off for p in known), sum(p.encoder_flops for p in known))
    verdict = extra.get(PREFILL_KEY)
    return RequestStep(
        req_id,
        num_prompt,
        schedule,
        tuple(spans),
        tokens_in,
        skip,
        encoder_flops,
        verdict if isinstance(verdict, str) else None,
        known[0].budget_of if known else None,
        None if embeds == spans else tuple(embeds),
    )


def _embed_spans(position) -> list[tuple[int, int]]:
    """(offset, length) of the runs of a `PlaceholderRange` that hold embeddings (`is_embed`; the
    whole range when it has none)."""
    if getattr(position, "is_embed", None) is None:
        return [(position.offset, position.length)]
    return [(start, end + 1 - start) for start, end in position.extract_embeds_range()]


def item_values(mm_features) -> list[list[float]]:
    """Each item's `ItemParams` values ([] where it has none), for `state.ITEMS_KEY`."""
    values = []
    for feature in mm_features:
        item, name = feature.data, field_name(feature.modality)
        values.append(item[name].data.tolist() if item is not None and name in item else [])
    return values


def exit_if_peers_would_hang(vllm_config) -> None:
    """End this worker after its forward raised, when other ranks wait for it in a collective.

    vLLM 0.32's `WorkerProc` only logs an exception of a rank that is not the output rank, and
    the ranks still inside the forward then wait for it forever. A dead worker is what vLLM's
    executor watches for: it shuts the engine down, and in-flight requests fail at once.
    """
    parallel = vllm_config.parallel_config
    if parallel.tensor_parallel_size * parallel.pipeline_parallel_size == 1:
        return
    logger.exception(
        "aim-vllm: the forward failed on this rank; exiting so the engine stops instead of hanging"
    )
    sys.stderr.flush()  # os._exit skips interpreter shutdown
    os._exit(1)
