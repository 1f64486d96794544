"""In-LLM pruning with real removal in vLLM: exactness, batching, counters, fallbacks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aim_vllm.core.schedule import AimSchedule, preset_schedule
from aim_vllm.core.token_counts import visual_kept_after_layer
from aim_vllm.kv.plan import blocks_needed, cdiv
from tests.engine import servers
from tests.engine.client import (
    Media,
    aim_kwargs,
    assert_matches_reference,
    chat,
    image_item,
    reference_item,
    video_item,
)

QUESTION = "How many red squares are there?"
NUM_LAYERS = 6  # the tiny model


@pytest.fixture(scope="module")
def image() -> Media:
    return image_item(3, 500, 260)


@pytest.fixture(scope="module")
def video() -> Media:
    return video_item(4, 8)


SCHEDULES = [
    AimSchedule(1.0, (2, 5)),
    AimSchedule(1.0, (0, 6)),
    AimSchedule(0.25, (1, 4)),
    AimSchedule(0.5, (3, 6)),
    preset_schedule("balanced", NUM_LAYERS),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_pruning_matches_reference_with_removal(aim_engine, reference, image, video, kind, schedule) -> None:
    """Greedy tokens + logprobs (prefill and 8 decode steps) equal the reference that removes rows."""
    item = image if kind == "image" else video
    response = chat(aim_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=8)
    assert response["usage"]["aim"]["pruning"] == "pruned"
    assert_matches_reference(reference, response, [item], schedule)


def test_preset_by_name_prunes_like_its_schedule(aim_engine, reference, video) -> None:
    """`aim_preset` resolves on the engine to the same schedule as the core preset."""
    response = chat(aim_engine, [video], QUESTION, {"aim_preset": "balanced"})
    assert_matches_reference(reference, response, [video], preset_schedule("balanced", NUM_LAYERS))


def test_counters_show_rows_and_kept_tokens_per_layer(aim_engine, video) -> None:
    """rows per layer = text + visual entering the layer; kept per pruned layer = int(N_vis * r_l)."""
    schedule = AimSchedule(0.25, (1, 4))
    aim = chat(aim_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=1)["usage"]["aim"]
    merged, text = aim["visual_tokens_merged"], aim["text_tokens"]
    kept = visual_kept_after_layer(merged, NUM_LAYERS, (1, 4))
    assert aim["rows_per_layer"] == [text + v for v in [merged, *kept[:-1]]]
    assert aim["visual_tokens_kept"] == {"1": kept[1], "2": kept[2], "3": 0}
    assert 0 < aim["flops_ratio"] < 0.25
    # KV: each layer's blocks (from the runner's block tables) hold its rows; AIM off holds all
    assert aim["kv_blocks_per_layer"] == blocks_needed(aim["rows_per_layer"], aim["kv_block_size"])
    off = chat(aim_engine, [video], QUESTION, aim_kwargs(AimSchedule()), max_tokens=1)["usage"]
    assert off["aim"]["kv_blocks_per_layer"] == [cdiv(off["prompt_tokens"], 128)] * NUM_LAYERS
    assert off["aim"]["kv_blocks_saved"] == 0


def test_batch_of_different_schedules(aim_engine, reference, image, video) -> None:
    """8 concurrent requests (off, merge, prune, both, text-only) each equal their own reference."""
    jobs = [
        ([video], AimSchedule()),
        ([image], AimSchedule(0.5)),
        ([video], AimSchedule(1.0, (1, 3))),
        ([image], AimSchedule(0.25, (2, 6))),
        ([], AimSchedule()),
        ([video], AimSchedule(0.3, (0, 5))),
        ([image], AimSchedule(1.0, (4, 6))),
        ([video], AimSchedule(0.125, (3, 5))),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(chat, aim_engine, items, QUESTION, aim_kwargs(s), max_tokens=6) for items, s in jobs
        ]
        responses = [f.result() for f in futures]
    for (items, schedule), response in zip(jobs, responses, strict=True):
        assert_matches_reference(reference, response, items, schedule if items else AimSchedule())


def test_prompt_logprobs_fall_back_to_unpruned(aim_engine, reference, image) -> None:
    """prompt_logprobs need every prompt row: pruning is skipped, said so, and merge still applies."""
    schedule = AimSchedule(0.5, (1, 4))
    response = chat(aim_engine, [image], QUESTION, aim_kwargs(schedule), prompt_logprobs=1)
    assert response["usage"]["aim"]["pruning"].startswith("skipped: prompt_logprobs")
    assert_matches_reference(reference, response, [image], AimSchedule(0.5))
    item = reference_item(reference, image, 0.5)
    expected = reference.prompt_logprobs(response["prompt_token_ids"], [item])
    got = response["prompt_logprobs"]
    for position, (token, entry, want) in enumerate(
        zip(response["prompt_token_ids"], got, expected, strict=True)
    ):
        if want is None:
            continue
        assert abs(entry[str(token)]["logprob"] - want) < 1e-4, position


def _metric(server, name: str) -> float:
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    (line,) = [
        line for line in metrics.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")
    ]
    return float(line.split()[-1])


def _cache_hits(server) -> float:
    return _metric(server, "vllm:prefix_cache_hits_total")


@pytest.mark.parametrize("schedule", [AimSchedule(), AimSchedule(0.25)], ids=["off", "merge-0.25"])
def test_a_second_turn_reads_the_prefix_cache(aim_engine, reference, image, schedule) -> None:
    """vLLM's prefix caching stays on for requests that do not prune: a conversation's second turn
    reuses the first turn's prompt blocks (vLLM's own counter) and answers as the reference does."""
    aim = aim_kwargs(schedule)
    first = chat(aim_engine, [image], QUESTION, aim, max_tokens=4)
    assert first["usage"]["aim"]["pruning"] == "not requested"
    reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    history = [{"role": "user", "content": [image.part, {"type": "text", "text": QUESTION}]}, reply]
    before = _cache_hits(aim_engine)
    second = chat(aim_engine, [], "And how many blue ones?", aim, max_tokens=6, history=history)
    hits = _cache_hits(aim_engine) - before
    assert hits >= first["usage"]["prompt_tokens"] - 128  # every full block of the first prompt
    assert_matches_reference(reference, second, [image], schedule)
    # vLLM sends the worker no data for the cached image: usage still knows its AIM parameters
    for key in ("merge_ratio", "visual_tokens_in", "visual_tokens_merged"):
        assert second["usage"]["aim"][key] == first["usage"]["aim"][key], key


def test_pruned_requests_next_to_cached_ones_stay_exact(aim_engine, reference, image, video) -> None:
    """Repeated (cache-hitting) AIM-off and merge-only requests run in the same batches as pruned
    requests of the same media; every answer equals its reference."""
    jobs = [
        ([video], AimSchedule()),
        ([video], AimSchedule(0.5, (1, 4))),
        ([video], AimSchedule()),
        ([image], AimSchedule(0.25)),
        ([image], AimSchedule(0.25, (2, 5))),
        ([image], AimSchedule(0.25)),
        ([video], AimSchedule(0.5, (1, 4))),
    ]
    before = _cache_hits(aim_engine)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(chat, aim_engine, items, QUESTION, aim_kwargs(s), max_tokens=6) for items, s in jobs
        ]
        responses = [f.result() for f in futures]
    assert _cache_hits(aim_engine) > before
    for (items, schedule), response in zip(jobs, responses, strict=True):
        expected = "pruned" if schedule.prune_layers else "not requested"
        assert response["usage"]["aim"]["pruning"] == expected
        assert_matches_reference(reference, response, items, schedule)


@pytest.fixture(scope="module")
def small_engine(tiny_model_dir, tmp_path_factory):
    """7 KV blocks of 128 tokens and a 512-token step budget (vLLM's defaults otherwise: chunked
    prefill, prefix caching): long prompts cannot prune, and concurrent decodes run out of blocks
    (preemption + recompute)."""
    log = tmp_path_factory.mktemp("small-engine") / "log.txt"
    block_bytes = 128 * 6 * 2 * 2 * 32 * 4  # tokens x layers x (k, v) x kv heads x head size x fp32
    flags = ["--max-num-batched-tokens", "512", "--max-model-len", "768"]
    flags += ["--kv-cache-memory-bytes", str(7 * block_bytes)]
    server = servers.start(tiny_model_dir, log, *flags, env={"VLLM_CPU_KVCACHE_SPACE": None})
    yield server
    server.stop()


def test_split_prompt_falls_back_and_stays_exact(small_engine, reference, video) -> None:
    """A prompt longer than the step budget is prefilled in chunks: pruning is skipped, reported."""
    schedule = AimSchedule(0.4, (1, 4))  # 8 x 78 + 1 visual + text: over 512, under 768
    response = chat(small_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=4)
    assert response["usage"]["aim"]["pruning"].startswith("skipped: its prompt with max_tokens")
    assert_matches_reference(reference, response, [video], AimSchedule(0.4))


def test_no_request_reads_a_pruned_requests_blocks(small_engine, reference, video) -> None:
    """A pruned request leaves no blocks in the prefix cache: the same prompt and level again, now
    unable to prune (max_tokens beyond the step budget) and so free to read the cache, finds none
    of its blocks and answers unpruned; its own repeat then does hit (caching is on)."""
    schedule = AimSchedule(0.25, (1, 4))
    pruned = chat(small_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=4)
    assert pruned["usage"]["aim"]["pruning"] == "pruned"
    assert pruned["usage"]["prompt_tokens"] > 256  # two full blocks that could be hit
    before = _cache_hits(small_engine)
    longest = 768 - pruned["usage"]["prompt_tokens"]  # prompt + max_tokens fill the context: > 512
    reader = chat(small_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=longest)
    assert reader["usage"]["aim"]["pruning"].startswith("skipped: its prompt with max_tokens")
    assert _cache_hits(small_engine) == before
    assert_matches_reference(reference, _first_tokens(reader, 4), [video], AimSchedule(0.25))
    again = chat(small_engine, [video], QUESTION, aim_kwargs(schedule), max_tokens=longest)
    assert _cache_hits(small_engine) > before
    assert again["choices"][0]["token_ids"] == reader["choices"][0]["token_ids"]


def _first_tokens(response: dict, count: int) -> dict:
    """`response` cut to its first `count` generated tokens (greedy: each step depends only on
    the ones before it)."""
    choice = response["choices"][0]
    logprobs = {**choice["logprobs"], "content": choice["logprobs"]["content"][:count]}
    cut = {**choice, "token_ids": choice["token_ids"][:count], "logprobs": logprobs}
    return {**response, "choices": [cut]}


PREEMPT_SCHEDULES = [
    AimSchedule(28 / 196, (1, 4)),
    AimSchedule(28 / 196, (2, 5)),
    AimSchedule(28 / 196, (0, 6)),
]
SMALL_POOL = 7 * 6  # blocks of one layer in `small_engine`'s cache (Design C: one KV-cache group per layer)


def _preemptions(server) -> float:
    return _metric(server, "vllm:num_preemptions_total")


def _concurrently(server, video, max_tokens: int) -> list[dict]:
    with ThreadPoolExecutor(len(PREEMPT_SCHEDULES)) as pool:
        futures = [
            pool.submit(
                chat, server, [video], QUESTION, aim_kwargs(s), max_tokens=max_tokens, ignore_eos=True
            )
            for s in PREEMPT_SCHEDULES
        ]
        return [f.result() for f in futures]


def test_pruned_requests_fit_where_their_full_kv_would_not(small_engine, reference, video) -> None:
    """Each layer holds only the tokens it kept (usage.aim.kv_blocks_per_layer, read from the block
    tables, equals the schedule's prediction), so three pruned requests that would need more blocks
    than the cache has if every layer kept every token (Design A preempted here) run side by side."""
    before = _preemptions(small_engine)
    responses = _concurrently(small_engine, video, max_tokens=60)
    full = 0
    for schedule, response in zip(PREEMPT_SCHEDULES, responses, strict=True):
        aim = response["usage"]["aim"]
        assert aim["pruning"] == "pruned"
        assert aim["kv_blocks_per_layer"] == blocks_needed(aim["rows_per_layer"], aim["kv_block_size"])
        assert aim["kv_blocks_saved"] > 0
        assert_matches_reference(reference, response, [video], schedule)
        full += 6 * cdiv(response["usage"]["prompt_tokens"] + 60, aim["kv_block_size"])
    assert full > SMALL_POOL, "the requests would fit unpruned: the test shows nothing"
    assert _preemptions(small_engine) == before


def test_preempted_pruned_requests_recompute_exactly(small_engine, reference, video) -> None:
    """Decoding long enough exhausts even the pruned footprint: the preempted requests free every
    group, are recomputed from scratch (pruning decided again by scheduler and worker alike) and
    still equal the reference. `usage.aim` says a recomputed request's prefill ran again
    (`prefills`) and counts its blocks saved against what its layers hold, never below 0."""
    before = _preemptions(small_engine)
    responses = _concurrently(small_engine, video, max_tokens=200)
    for schedule, response in zip(PREEMPT_SCHEDULES, responses, strict=True):
        aim = response["usage"]["aim"]
        assert aim["pruning"] == "pruned" and aim["kv_blocks_saved"] > 0
        assert_matches_reference(reference, response, [video], schedule)
    assert _preemptions(small_engine) > before, "the test did not cause a preemption"
    assert max(response["usage"]["aim"]["prefills"] for response in responses) >= 2


# A chat template that puts the media after the text, as a raw prompt may: the prompt's last rows
# are visual (an image's last row of newline tokens, a video's trailing newline).
MEDIA_LAST = (
    "{%- for m in messages -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] != 'text' -%}<{{ p['type'] }}>{%- endfor -%}"
    "{%- endfor -%}"
)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_prompt_ending_in_visual_rows_runs_merged_and_unpruned(
    aim_engine, reference, image, video, kind
) -> None:
    """AIM ranks visual rows by the text after them, and the last row gives the first token: such a
    prompt is merged, not pruned, says so in `usage.aim`, and equals the unpruned reference."""
    from aim_vllm.pruning.state import SKIPPED_TRAILING_VISUAL

    item = image if kind == "image" else video
    schedule = AimSchedule(0.25, (1, 4))
    response = chat(
        aim_engine, [item], QUESTION, aim_kwargs(schedule), max_tokens=4, chat_template=MEDIA_LAST
    )
    aim = response["usage"]["aim"]
    assert response["prompt_token_ids"][-1] in reference.visual_token_ids
    assert aim["pruning"] == SKIPPED_TRAILING_VISUAL and aim["visual_tokens_merged"] < aim["visual_tokens_in"]
    assert_matches_reference(reference, response, [item], AimSchedule(schedule.merge_ratio))
