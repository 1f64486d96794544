"""usage.aim: stats values, the file store shared by worker and API server, the ASGI middleware."""

import json
import os
import time

import pytest

from aim_vllm.core.architectures import ARCHITECTURES
from aim_vllm.core.token_counts import visual_kept_after_layer
from aim_vllm.usage import StatsStore, external_request_id, request_stats
from aim_vllm.usage_middleware import AimUsageMiddleware

SHAPE = ARCHITECTURES["llava-onevision-7b"].llm


def _stats(prune=(14, 22), **encoder):
    merged = 32 * 49 + 1
    kept = visual_kept_after_layer(merged, 28, prune)
    entering = [merged, *kept[:-1]]
    return request_stats(
        merge_ratio=0.25,
        prune_layers=prune,
        pruning="pruned",
        num_prompt=100 + merged,
        visual_tokens_in=32 * 196 + 1,
        visual_tokens_merged=merged,
        kept_after_layer=kept,
        rows_per_layer=[100 + v for v in entering],
        shape=SHAPE,
        **encoder,
    )


def test_stats_match_the_flops_model() -> None:
    """The paper's LLaVA-OV-7B example (newline included): 6.7x fewer executed FLOPs."""
    stats = _stats()
    assert stats.text_tokens == 100
    assert stats.visual_tokens_kept["14"] == (1569 * 7) // 8
    assert stats.visual_tokens_kept["21"] == 0
    assert "13" not in stats.visual_tokens_kept
    assert 1 / stats.flops_ratio == pytest.approx(6.71, rel=5e-3)


def test_encoder_flops_join_the_whole_prefill() -> None:
    """With its items' encoder FLOPs known, the request reports them and encoder + LLM over AIM off;
    without them only the ratio when the stock tower ran (1.0) is known."""
    stats = _stats(encoder_keep=0.5, encoder_flops=(20e12, 12e12))  # (stock, executed)
    assert (stats.encoder_flops, stats.encoder_flops_off, stats.encoder_flops_ratio) == (12e12, 20e12, 0.6)
    whole = (12e12 + stats.llm_prefill_flops) / (20e12 + stats.llm_prefill_flops_off)
    assert stats.prefill_flops_ratio == pytest.approx(whole)
    assert stats.flops_ratio < stats.prefill_flops_ratio < 0.6
    unknown = _stats(encoder_keep=0.5)
    assert unknown.encoder_flops_ratio is None and unknown.prefill_flops_ratio is None
    stock = _stats()
    assert stock.encoder_flops_ratio == 1.0 and stock.encoder_flops is None


def test_request_step_sums_its_items_encoder_flops() -> None:
    """The runner's view of a request: encoder FLOPs summed over its items, unknown if one lacks them."""
    from types import SimpleNamespace

    from aim_vllm.core.item_params import ItemParams, field_name
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.runner_context import request_step

    schedule = AimSchedule(0.5, encoder_keep=0.5)

    def feature(offset: int, flops: tuple[float, float] | None):
        params = ItemParams(schedule, 40, 0, 0, *flops) if flops else None
        data = {field_name("image"): SimpleNamespace(data=params.to_tensor())} if params else {}
        position = SimpleNamespace(offset=offset, length=20)
        return SimpleNamespace(mm_position=position, data=data, modality="image")

    both = request_step("r", 100, [feature(0, (4.0, 3.0)), feature(30, (6.0, 2.0))], None)
    assert both.encoder_flops == (10.0, 5.0) and both.visual_tokens_in == 80
    one_unknown = request_step("r", 100, [feature(0, (4.0, 3.0)), feature(30, None)], None)
    assert one_unknown.encoder_flops is None
    params = ItemParams(schedule, 40, 0, 0, 4.0, 3.0)
    assert ItemParams.from_tensor(params.to_tensor()) == params


def test_engine_ids_map_to_response_ids() -> None:
    assert external_request_id("chatcmpl-abc-1a2b3c4d") == "chatcmpl-abc"


def test_store_put_pop_sweep(tmp_path) -> None:
    store = StatsStore(tmp_path)
    store.put("chatcmpl-x", _stats())
    assert store.pop("chatcmpl-x")["merge_ratio"] == 0.25
    assert store.pop("chatcmpl-x") is None  # taken once
    store.put("../evil", _stats())  # ids never escape the directory
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())
    old = tmp_path / "stale.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.sweep(max_age_s=60)
    assert not old.exists()


async def _run(app, path: str = "/v1/chat/completions") -> tuple[dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST"}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _upstream(content_type: bytes, chunks: list[bytes]):
    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
        )
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    return app


@pytest.fixture
def store(tmp_path, monkeypatch) -> StatsStore:
    monkeypatch.setenv("AIM_VLLM_STATS_DIR", str(tmp_path))
    store = StatsStore(tmp_path)
    store.put("chatcmpl-1", _stats())
    return store


async def test_json_response_gets_usage_aim(store) -> None:
    body = json.dumps({"id": "chatcmpl-1", "usage": {"prompt_tokens": 3}}).encode()
    app = AimUsageMiddleware(_upstream(b"application/json", [body[:10], body[10:]]))
    start, out = await _run(app)
    payload = json.loads(out)
    assert payload["usage"]["aim"]["visual_tokens_in"] == 32 * 196 + 1
    assert dict(start["headers"])[b"content-length"] == str(len(out)).encode()


async def test_stream_usage_chunk_gets_usage_aim(store) -> None:
    """The SSE event carrying usage (split across body chunks) gets `aim`; others pass unchanged."""
    first = b'data: {"id": "chatcmpl-1", "choices": [], "usage": null}\n\n'
    last = b'data: {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3}}\n\ndata: [DONE]\n\n'
    app = AimUsageMiddleware(_upstream(b"text/event-stream", [first, last[:30], last[30:]]))
    _, out = await _run(app)
    events = [e for e in out.split(b"\n\n") if e]
    assert events[0] == first.strip()
    assert json.loads(events[1][len(b"data: ") :])["usage"]["aim"]["pruning"] == "pruned"
    assert events[2] == b"data: [DONE]"


async def test_other_routes_pass_through(store) -> None:
    body = json.dumps({"id": "chatcmpl-1", "usage": {}}).encode()
    _, out = await _run(AimUsageMiddleware(_upstream(b"application/json", [body])), path="/v1/models")
    assert out == body


class _Counts:
    """`pruning.rows.RowCounts` as the reporter reads it: what each request's layers computed."""

    def __init__(self, by_request: dict[str, tuple[list[int], list[int]]]) -> None:
        self.by_request = by_request

    def of_request(self, req_id: str) -> tuple[list[int], list[int]]:
        return self.by_request[req_id]


def _reported(tmp_path, started, counts=None, kv_held=None) -> dict[str, dict]:
    from aim_vllm.usage import UsageReporter

    store = StatsStore(tmp_path)
    UsageReporter(SHAPE, store).report(started, counts, kv_held, 16 if kv_held else None)
    return {external_request_id(req.req_id): store.pop(external_request_id(req.req_id)) for req, _ in started}


def _pruning_request(req_id: str):
    from aim_vllm.core.schedule import AimSchedule
    from aim_vllm.pruning.state import RequestStep

    # 28 layers (the 7B shape), 400 visual tokens at offset 10, 60 text tokens after them
    return RequestStep(f"{req_id}-abcdefgh", 470, AimSchedule(1.0, (14, 22)), ((10, 400),), 400)


def test_reporter_reports_the_counted_rows_of_a_pruned_request(tmp_path) -> None:
    """What the layers computed is what `usage.aim` says; an unpruned request reports its whole
    prompt at every layer; a request without visual tokens reports nothing."""
    from aim_vllm.pruning.state import PruneRecord, RequestStep

    pruned_req, unpruned_req = _pruning_request("cmpl-p"), _pruning_request("cmpl-u")
    text_req = RequestStep("cmpl-t-abcdefgh", 30)
    plan = PruneRecord.planned(pruned_req, 28)
    skipped = PruneRecord.unpruned("skipped: test", unpruned_req, 28)
    counts = _Counts({pruned_req.req_id: (plan.rows_per_layer, plan.kept_after_layer)})
    kv = {pruned_req.req_id: (470, [20] * 14 + [5] * 14), unpruned_req.req_id: (470, [30] * 28)}
    started = [
        (pruned_req, plan),
        (unpruned_req, skipped),
        (text_req, PruneRecord.unpruned("x", text_req, 28)),
    ]
    got = _reported(tmp_path, started, counts, kv)
    assert got["cmpl-p"]["pruning"] == "pruned" and got["cmpl-p"]["rows_per_layer"] == plan.rows_per_layer
    assert got["cmpl-p"]["visual_tokens_kept"]["21"] == 0 and got["cmpl-p"]["flops_ratio"] < 0.7
    assert got["cmpl-p"]["kv_blocks_per_layer"] == kv[pruned_req.req_id][1]
    assert got["cmpl-p"]["kv_blocks_saved"] == 28 * 30 - (14 * 20 + 14 * 5)
    assert got["cmpl-u"]["pruning"] == "skipped: test" and got["cmpl-u"]["rows_per_layer"] == [470] * 28
    assert got["cmpl-u"]["flops_ratio"] == pytest.approx(1.0) and got["cmpl-u"]["kv_blocks_saved"] == 0
    assert got["cmpl-t"] is None
    assert got["cmpl-p"]["prefills"] == got["cmpl-u"]["prefills"] == 1


def test_reporter_counts_blocks_saved_against_the_tokens_held(tmp_path) -> None:
    """A recompute after preemption holds its generated tokens as well, the first chunk of a
    chunked prefill only that chunk: blocks saved are counted against the step's tokens, never
    below 0 for an unpruned request; `prefills` says the figures are a recompute's."""
    from aim_vllm.pruning.state import PruneRecord

    pruned_req, unpruned_req = _pruning_request("cmpl-p"), _pruning_request("cmpl-u")
    recompute = PruneRecord.planned(pruned_req, 28)
    recompute.prefills = 2
    counts = _Counts({pruned_req.req_id: (recompute.rows_per_layer, recompute.kept_after_layer)})
    # 470 prompt + 200 generated tokens = 42 blocks of 16 where the whole sequence is held
    kv = {pruned_req.req_id: (670, [42] * 14 + [17] * 14), unpruned_req.req_id: (256, [16] * 28)}
    started = [(pruned_req, recompute), (unpruned_req, PruneRecord.unpruned("off", unpruned_req, 28))]
    got = _reported(tmp_path, started, counts, kv)
    assert got["cmpl-p"]["kv_blocks_saved"] == 14 * (42 - 17) and got["cmpl-p"]["prefills"] == 2
    assert got["cmpl-p"]["pruning"] == "pruned"
    assert got["cmpl-u"]["kv_blocks_saved"] == 0  # its first chunk: 256 tokens, 16 blocks


@pytest.mark.parametrize("layer", [0, 14, 27])
def test_reporter_catches_counts_that_differ_from_the_plan(tmp_path, layer, caplog) -> None:
    """A layer that computed other rows, or kept other visual tokens, than the plan its KV blocks
    were sized by is reported in `usage.aim.pruning` and logged, with the counts that ran."""
    from aim_vllm.pruning.state import PruneRecord

    req = _pruning_request("cmpl-p")
    plan = PruneRecord.planned(req, 28)
    rows, kept = list(plan.rows_per_layer), list(plan.kept_after_layer)
    rows[layer] += 1
    got = _reported(tmp_path, [(req, plan)], _Counts({req.req_id: (rows, kept)}))["cmpl-p"]
    assert got["pruning"].startswith(f"error: layer {layer} computed {rows[layer]} rows")
    assert got["rows_per_layer"] == rows and f"request {req.req_id}" in caplog.text
    kept[layer] -= 1
    rows[layer] -= 1
    got = _reported(tmp_path, [(req, plan)], _Counts({req.req_id: (rows, kept)}))["cmpl-p"]
    assert got["pruning"] == (
        f"error: layer {layer} computed {rows[layer]} rows and kept {kept[layer]} visual tokens, "
        f"its plan {plan.rows_per_layer[layer]} and {plan.kept_after_layer[layer]}"
    )
    short = _reported(tmp_path, [(req, plan)], _Counts({req.req_id: (rows[:-1], kept[:-1])}))["cmpl-p"]
    assert short["pruning"] == "error: 27 layers counted, 28 planned"


def test_item_params_carry_the_budget_they_were_solved_for() -> None:
    from aim_vllm.core.item_params import ItemParams
    from aim_vllm.core.level import AimLevel, budget_note, budget_of, without_engine_keys
    from aim_vllm.core.schedule import AimSchedule

    note = budget_note(AimLevel(budget=0.3))
    assert budget_of(note) == (0.3, False) and without_engine_keys({**note, "x": 1}) == {"x": 1}
    assert budget_of(budget_note(AimLevel(budget=0.25, encoder_keep="auto"))) == (0.25, True)
    assert budget_note(AimLevel(preset="balanced")) == {} and budget_of({}) is None
    params = ItemParams(AimSchedule(0.5, (1, 3)), 40).with_budget((0.25, True))
    assert ItemParams.from_tensor(params.to_tensor()) == params and params.budget_of == (0.25, True)
    assert ItemParams(AimSchedule(0.5), 40).budget_of is None


@pytest.mark.parametrize(
    ("budget", "met"), [((0.1, False), False), ((0.2, False), True), ((0.2, True), False), (None, None)]
)
def test_budget_met_compares_the_ratio_of_the_budget(budget, met) -> None:
    """Over the LLM (`flops_ratio`) or the whole prefill (`prefill_flops_ratio`, where known)."""
    stats = _stats(encoder_keep=1.0, encoder_flops=(20e12, 20e12), budget=budget)
    assert 0.1 < stats.flops_ratio < 0.2 < stats.prefill_flops_ratio
    assert (stats.budget, stats.budget_met) == ((budget[0], met) if budget else (None, None))


def test_engine_note_is_read_and_never_swept(tmp_path) -> None:
    store = StatsStore(tmp_path)
    assert store.engine_pruning_off() == ""  # not written: the solver may prune
    store.put_engine_pruning_off("attention backend X cannot rebuild metadata")
    old = time.time() - 3600
    os.utime(tmp_path / StatsStore.ENGINE_FILE, (old, old))
    store.sweep(max_age_s=1.0)
    assert store.engine_pruning_off() == "attention backend X cannot rebuild metadata"
