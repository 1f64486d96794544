"""Builds the `StepContext` of a forward from vLLM's V1 model runner (vllm==0.32.0 `GPUModelRunner`).

Reads, in batch order, each request's prompt length, visual placeholder spans
(`CachedRequestState.mm_features[i].mm_position`) and AIM parameters (the per-item
`aim_<modality>` field the processor attached), plus the engine settings that rule pruning out.
"""

from __future__ import annotations

from aim_vllm.models.common import ItemParams, field_name
from aim_vllm.pruning.state import SKIPPED_PROMPT_LOGPROBS, RequestStep, StepContext


def build_step_context(runner) -> StepContext:
    batch = runner.input_batch
    steps = tuple(
        _request_step(req_id, runner.requests[req_id]) for req_id in batch.req_ids[: batch.num_reqs]
    )
    return StepContext(steps, frozenset(runner.requests), disabled_reason(runner.vllm_config))


def disabled_reason(vllm_config) -> str:
    """Why pruning cannot run in this engine ('' when it can)."""
    if vllm_config.cache_config.enable_prefix_caching:
        return "prefix caching is enabled (pruned KV must never be reused); use --no-enable-prefix-caching"
    if vllm_config.speculative_config is not None:
        return "speculative decoding needs every row of every layer"
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        return "pipeline parallelism is not supported with pruning"
    return ""


def _request_step(req_id: str, state) -> RequestStep:
    """A request's spans and AIM parameters (from its items' `aim_<modality>` fields)."""
    spans, params = [], []
    for feature in state.mm_features:
        spans.append((feature.mm_position.offset, feature.mm_position.length))
        item, name = feature.data, field_name(feature.modality)
        params.append(ItemParams.from_tensor(item[name].data) if item is not None and name in item else None)
    known = [p for p in params if p is not None]
    tokens_in = sum(p.tokens_in if p else length for p, (_, length) in zip(params, spans, strict=True))
    sampling = state.sampling_params
    skip = SKIPPED_PROMPT_LOGPROBS if sampling is not None and sampling.prompt_logprobs is not None else ""
    schedule = known[0].schedule if known else None
    return RequestStep(req_id, state.num_prompt_tokens, schedule, tuple(spans), tokens_in, skip)
