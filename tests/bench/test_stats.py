"""Summaries and ratios of `aim-vllm bench`: percentiles, throughput over wall time, ratios to off, Amdahl."""

from __future__ import annotations

import pytest

from bench.client import PhaseResult, RequestResult
from bench.stats import (
    add_ratios,
    amdahl_bound,
    borrow_flops,
    percentile,
    ratio,
    summarise_load,
    summarise_split,
)


def _ok(
    ttft: float, e2e: float, tokens: int = 5, flops: float | None = None, prompt: int = 50
) -> RequestResult:
    aim = {} if flops is None else {"flops_ratio": flops, "pruning": "pruned", "visual_tokens_in": 100}
    return RequestResult(ttft_s=ttft, e2e_s=e2e, output_tokens=tokens, prompt_tokens=prompt, aim=aim)


def test_percentile_interpolates() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101), ([1.0], -1)])
def test_percentile_rejects(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarise_load_over_phases() -> None:
    """Throughput divides by the summed wall time of the phases; failed requests count as errors only."""
    phases = [
        PhaseResult([_ok(1.0, 2.0, flops=0.5), _ok(3.0, 4.0, flops=0.5)], wall_s=4.0),
        PhaseResult([_ok(2.0, 3.0, flops=0.5), RequestResult(e2e_s=9.0, error="HTTP 500")], wall_s=6.0),
    ]
    cell = summarise_load(phases)
    assert (cell["requests"], cell["errors"], cell["first_error"]) == (3, 1, "HTTP 500")
    assert (
        cell["ttft_p50_s"] == 2.0 and cell["e2e_p50_s"] == 3.0 and cell["ttft_mean_s"] == pytest.approx(2.0)
    )
    assert cell["tpot_p50_s"] == pytest.approx(0.25)
    assert cell["requests_per_s"] == pytest.approx(3 / 10) and cell["output_tokens_per_s"] == pytest.approx(
        15 / 10
    )
    assert cell["flops_ratio"] == 0.5 and cell["pruning"] == "pruned" and cell["visual_tokens_in"] == 100
    assert cell["round_requests_per_s"] == pytest.approx([2 / 4, 1 / 6])  # phase by phase, successes only


def test_summarise_load_without_successes_or_aim() -> None:
    """Plain vLLM reports no usage.aim: AIM fields are None, not errors."""
    cell = summarise_load([PhaseResult([RequestResult(error="boom")], wall_s=1.0)])
    assert cell["requests"] == 0 and cell["ttft_p50_s"] is None and cell["flops_ratio"] is None
    plain = summarise_load([PhaseResult([_ok(1.0, 2.0)], wall_s=2.0)])
    assert plain["flops_ratio"] is None and plain["pruning"] is None


def test_add_ratios_pairs_cells_of_the_same_media_and_concurrency() -> None:
    cells = [
        {"media": "image", "concurrency": 1, "level": "off", "ttft_p50_s": 2.0, "requests_per_s": 1.0},
        {"media": "image", "concurrency": 1, "level": "max", "ttft_p50_s": 1.0, "requests_per_s": 3.0},
        {"media": "image", "concurrency": 4, "level": "max", "ttft_p50_s": 1.0, "requests_per_s": 3.0},
    ]
    out = add_ratios(cells, "off")
    assert out[0]["ratio"]["ttft_p50_s"] == 1.0
    assert out[1]["ratio"]["ttft_p50_s"] == 0.5 and out[1]["ratio"]["requests_per_s"] == 3.0
    assert out[1]["ratio"]["tpot_p50_s"] is None  # metric missing
    assert all(v is None for v in out[2]["ratio"].values())  # no off cell at concurrency 4
    assert out[1]["round_ratio_requests_per_s"] is None  # no per-round figures


def test_add_ratios_round_by_round() -> None:
    """Phase i of a cell is paired with phase i of the reference (same round)."""
    cells = [
        {"media": "image", "concurrency": 1, "level": "plain", "round_requests_per_s": [2.0, 4.0]},
        {"media": "image", "concurrency": 1, "level": "aim-off", "round_requests_per_s": [1.0, 5.0]},
        {"media": "image", "concurrency": 2, "level": "plain", "round_requests_per_s": [2.0]},
        {"media": "image", "concurrency": 2, "level": "aim-off", "round_requests_per_s": [1.0, 1.0]},
    ]
    out = add_ratios(cells, "plain")
    assert out[1]["round_ratio_requests_per_s"] == [0.5, 1.25]
    assert out[3]["round_ratio_requests_per_s"] is None  # rounds do not pair up


def test_ratio_edge_cases() -> None:
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None
    assert ratio(3.0, 2.0) == 1.5


def test_amdahl_bound() -> None:
    """No encoder: speedup = 1/f; all encoder: no speedup; the 8-frame 0.5B case: ~1.2x at best."""
    assert amdahl_bound(0.0, 0.25) == pytest.approx(4.0)
    assert amdahl_bound(1.0, 0.25) == pytest.approx(1.0)
    assert amdahl_bound(35 / 42, 0.1) == pytest.approx(1 / (35 / 42 + 7 / 42 * 0.1))


def test_summarise_split_llm_part_and_bound() -> None:
    """Fresh = encoder + LLM, repeat = LLM part; the bound uses off's encoder share and the FLOPs ratio."""
    pairs = {
        "off": [(_ok(42.0, 43.0, flops=1.0), _ok(7.0, 8.0, flops=1.0))],
        "balanced": [(_ok(36.0, 37.0, flops=0.1), _ok(1.4, 2.0, flops=0.1))],
        "broken": [(RequestResult(error="x"), _ok(1.0, 1.0))],
    }
    rows = {row["level"]: row for row in summarise_split(pairs, "off")}
    assert set(rows) == {"off", "balanced"}
    assert rows["off"]["encoder_share_ref"] == pytest.approx(35 / 42)
    balanced = rows["balanced"]
    assert balanced["e2e_speedup"] == pytest.approx(42 / 36) and balanced["llm_speedup"] == pytest.approx(5.0)
    assert balanced["flops_speedup"] == pytest.approx(10.0) and balanced[
        "llm_speedup_vs_flops"
    ] == pytest.approx(0.5)
    assert balanced["amdahl_bound_speedup"] == pytest.approx(amdahl_bound(35 / 42, 0.1))


def test_summarise_split_encoder_level_has_no_llm_only_bound() -> None:
    """A level merging inside the encoder is not bounded by the LLM-only Amdahl bound; its encoder
    part (fresh - repeat) gets its own speedup."""
    merged = _ok(20.0, 21.0, flops=0.1)
    merged.aim["encoder_keep"] = 0.5
    pairs = {
        "off": [(_ok(42.0, 43.0, flops=1.0), _ok(7.0, 8.0, flops=1.0))],
        "balanced": [(_ok(36.0, 37.0, flops=0.1), _ok(1.4, 2.0, flops=0.1))],
        "balanced,encoder:0.5": [(merged, _ok(1.5, 2.0, flops=0.1))],
    }
    rows = {row["level"]: row for row in summarise_split(pairs, "off")}
    assert rows["balanced"]["encoder_speedup"] == pytest.approx(35 / 34.6)
    assert rows["balanced"]["amdahl_bound_speedup"] is not None
    encoder = rows["balanced,encoder:0.5"]
    assert encoder["amdahl_bound_speedup"] is None and encoder["encoder_keep"] == 0.5
    assert encoder["encoder_speedup"] == pytest.approx(35 / 18.5)
    assert encoder["e2e_speedup"] == pytest.approx(42 / 20)


def test_summarise_split_needs_the_reference() -> None:
    assert summarise_split({"max": [(_ok(1.0, 1.0), _ok(0.5, 0.5))]}, "off") == []


def test_a_level_without_usage_borrows_flops_only_at_equal_tokens() -> None:
    """EVS reports no usage.aim: it takes aim-merge's FLOPs ratio when it sent as many prompt tokens
    (as many tokens in every layer), else its FLOPs stay unknown and so do the FLOPs columns."""

    def cell(level: str, tokens: float, flops: float | None) -> dict:
        return {
            "media": "video8",
            "concurrency": 1,
            "level": level,
            "prompt_tokens": tokens,
            "flops_ratio": flops,
        }

    same = borrow_flops([cell("evs", 90.0, None), cell("aim-merge", 90.0, 0.3)], {"evs": "aim-merge"})
    assert same[0]["flops_ratio"] == 0.3
    other = borrow_flops([cell("evs", 120.0, None), cell("aim-merge", 90.0, 0.3)], {"evs": "aim-merge"})
    assert other[0]["flops_ratio"] is None
    pairs = {
        "off": [(_ok(4.0, 5.0, flops=1.0, prompt=300), _ok(2.0, 3.0, flops=1.0, prompt=300))],
        "aim-merge": [(_ok(3.0, 4.0, flops=0.3, prompt=90), _ok(1.0, 2.0, flops=0.3, prompt=90))],
        "evs": [(_ok(3.0, 4.0, prompt=90), _ok(1.0, 2.0, prompt=90))],
        "evs-more": [(_ok(3.0, 4.0, prompt=120), _ok(1.0, 2.0, prompt=120))],
    }
    rows = {
        r["level"]: r for r in summarise_split(pairs, "off", {"evs": "aim-merge", "evs-more": "aim-merge"})
    }
    assert rows["evs"]["flops_ratio"] == 0.3 and rows["evs"]["flops_speedup"] == pytest.approx(1 / 0.3)
    assert rows["evs-more"]["flops_ratio"] is None and rows["evs-more"]["amdahl_bound_speedup"] is None
    assert rows["evs-more"]["llm_speedup"] == pytest.approx(2.0)
