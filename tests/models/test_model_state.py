"""Model Runner V2: AIM's `ModelState` hands the model the same step context as the V1 patch.

V2 cannot start on the CPU (it needs Triton), so the state is exercised without its runner: its
`DefaultModelState` parts are the no-op ones of a 1-D-RoPE model without prompt embeddings.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.pruning.decoder import PruningDecoder
from aim_vllm.pruning.support import engine_reason
from tests.plugin.test_support import engine_config

SCHEDULE = AimSchedule(0.25, (1, 4))


def _state():
    from aim_vllm.models.model_state import AimModelState

    state = AimModelState.__new__(AimModelState)  # no runner, model or encoder cache to build from
    state.rope_state = state.prompt_embeds_state = None
    state.aim_requests = {}
    return state


def _new_request(req_id: str, prompt_len: int, visual: tuple[int, int] | None, logprobs: int | None = None):
    from vllm.multimodal.inputs import PlaceholderRange
    from vllm.v1.core.sched.output import NewRequestData

    features = []
    if visual is not None:
        params = ItemParams(SCHEDULE, tokens_in=4 * visual[1]).to_tensor()
        data = {field_name("video"): SimpleNamespace(data=params)}
        features.append(SimpleNamespace(modality="video", mm_position=PlaceholderRange(*visual), data=data))
    return NewRequestData(
        req_id=req_id,
        prompt_token_ids=list(range(prompt_len)),
        mm_features=features,
        sampling_params=SimpleNamespace(prompt_logprobs=logprobs),
        pooling_params=None,
        block_ids=([],),
        num_computed_tokens=0,
        lora_request=None,
    )


def test_requests_reach_the_forward_in_batch_order() -> None:
    """`prepare_inputs` adds `aim_step`: known requests with their spans and schedule, in the
    batch's order; a dummy batch's unknown id runs unpruned; removed requests are forgotten."""
    state = _state()
    state.add_request(0, _new_request("video", 70, (5, 60)))
    state.add_request(1, _new_request("text", 12, None))
    inputs = state.prepare_inputs(SimpleNamespace(req_ids=["text", "dummy_0", "video"]), None)
    step = inputs["aim_step"]
    assert [r.req_id for r in step.requests] == ["text", "dummy_0", "video"]
    text, dummy, video = step.requests
    assert (video.num_prompt, video.visual_spans, video.schedule, video.visual_tokens_in) == (
        70,
        ((5, 60),),
        SCHEDULE,
        240,
    )
    assert text.schedule is None and dummy.schedule is None and dummy.num_prompt == 0
    state.remove_request("video")
    assert state.prepare_inputs(SimpleNamespace(req_ids=["text"]), None)["aim_step"].live_req_ids == {"text"}


def test_under_v2_every_pruned_request_reports_the_skip() -> None:
    """With the engine's V2 reason the decoder records each pruned request as skipped (and runs stock)."""
    state = _state()
    state.add_request(0, _new_request("video", 70, (5, 60)))
    step = state.prepare_inputs(SimpleNamespace(req_ids=["video"]), None)["aim_step"]
    reason = engine_reason(engine_config(v2=True))
    decoder = PruningDecoder(6, unsupported=reason)
    plan = decoder.plan(step, torch.tensor([0, 70]), torch.tensor([70]))
    assert not plan.changes_layout()
    ((req, record),) = plan.started
    assert req.req_id == "video" and record.status == f"skipped: {reason}"
