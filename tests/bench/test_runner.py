"""`aim-vllm bench` end to end against a fake streaming engine (no vLLM): real gateway, real client."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from aim_vllm.commands.serve import ENGINE_CMD_ENV
from bench import processes, report, runner
from bench.workload import MediaSpec

FAKE = Path(__file__).with_name("fake_stream_engine.py")
REPO = Path(__file__).resolve().parents[2]


def _options(tmp_path: Path, **changes) -> runner.BenchOptions:
    base = dict(
        model="fake-model", model_label="fake", engine_flags=(),
        media=(MediaSpec("image"), MediaSpec("video", 2)), concurrency=(1, 2),
        levels=("merge", "prune", "balanced", "budget:0.3"), rounds=1, waves=1, split_pairs=1,
        max_tokens=3, image_size=32, frame_size=32, out_dir=tmp_path, startup_timeout_s=60, progress=False,
    )  # fmt: skip
    return runner.BenchOptions(**(base | changes))


@pytest.fixture
def fake_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The AIM engine and plain vLLM both replaced by the fake streaming server; its request log."""
    monkeypatch.setenv(ENGINE_CMD_ENV, f"{sys.executable} {FAKE}")
    monkeypatch.setattr(processes, "PLAIN_ENTRY", "tests.bench.fake_stream_engine")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(tmp_path / "requests.jsonl"))
    monkeypatch.delenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", raising=False)
    return tmp_path / "requests.jsonl"


@pytest.mark.timeout(120)
def test_levels_through_the_gateway(tmp_path: Path, fake_engines: Path) -> None:
    """Every level reaches the engine through the gateway; `merge`/`prune` resolve from balanced."""
    result = runner.run(_options(tmp_path))
    assert result["mode"] == "levels" and result["reference"] == "off"
    assert result["levels"]["merge"] == "merge:0.25" and result["levels"]["prune"] == "merge:1,prune:3-5"
    cells = {(c["media"], c["concurrency"], c["level"]): c for c in result["cells"]}
    assert len(cells) == 2 * 2 * 5
    assert all(c["errors"] == 0 for c in cells.values())
    assert cells[("video2", 2, "off")]["requests"] == 2 and cells[("video2", 2, "off")]["flops_ratio"] == 1.0
    balanced = cells[("image", 1, "balanced")]
    assert balanced["flops_ratio"] == 0.25 and balanced["ratio"]["requests_per_s"] > 0
    assert balanced["output_tokens"] == 3 and balanced["ttft_p50_s"] <= balanced["e2e_p50_s"]
    assert [row["level"] for row in result["split"]["image"]][0] == "off"
    assert result["meta"]["settings"]["media"] == ["image", "video2"]
    sent = [json.loads(line) for line in fake_engines.read_text().splitlines()]
    warm_ups = 2 + 3 + 1  # off + balanced (resolving merge/prune), the 3 other levels, off for video2
    assert len(sent) == warm_ups + 2 * 5 * (2 + 1 + 2)  # per media and level: split pair, c=1, c=2
    assert {"aim_prune_l1": 3, "aim_prune_l2": 5, "aim_merge_ratio": 1.0} in sent
    assert os.environ["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "3600"  # set for the engines started
    paths = report.write_outputs(result, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["cells"] == result["cells"]


@pytest.mark.timeout(120)
def test_plugin_overhead_mode(tmp_path: Path, fake_engines: Path) -> None:
    """Plain engine (no usage.aim) against the AIM engine with AIM off, requests sent to each directly;
    each engine started alone for its turn, in ABBA order over rounds."""
    result = runner.run(
        _options(tmp_path, plugin_overhead=True, media=(MediaSpec("image"),), concurrency=(2,), rounds=2)
    )
    assert result["mode"] == "plugin-overhead" and result["reference"] == "plain"
    cells = {c["level"]: c for c in result["cells"]}
    assert set(cells) == {"plain", "aim-off"}
    assert cells["plain"]["flops_ratio"] is None and cells["aim-off"]["flops_ratio"] == 1.0
    assert cells["aim-off"]["ratio"]["requests_per_s"] is not None
    assert "split" not in result
    assert result["meta"]["settings"]["levels"] == ["plain", "aim-off"]
    assert result["meta"]["settings"]["split_pairs"] == 0
    assert "plugin cost" in report.markdown(result)
    serving = {row["figure"]: row for row in result["serving"]}
    for figure in ("startup_s", "requests_per_s", "second_ttft_s", "longest_gap_s"):
        assert serving[figure]["plain"] > 0 and serving[figure]["aim-off"] > 0, figure
        assert serving[figure]["ratio"]["aim-off"] is not None, figure
    assert [len(rounds) for rounds in result["serving_rounds"].values()] == [2, 2]
    assert "second turn" in report.markdown(result) and "goals: requests_per_s" in report.markdown(result)
    logs = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert logs == ["plain-0.log", "plain-3.log", "replica-1.log", "replica-2.log"]
    assert cells["plain"]["requests"] == cells["aim-off"]["requests"] == 2 * 2  # 2 rounds x 1 wave x c=2


@pytest.mark.timeout(120)
def test_evs_mode(tmp_path: Path, fake_engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock engine with --video-pruning-rate (and the CPU EVS fix on its PYTHONPATH) against the AIM
    engine at off, equal tokens (merge, merge + pruning) and equal FLOPs (budget), each engine alone."""
    started = []
    start_plain = processes.start_plain_engine

    def spy(model, flags, log_dir, index=1, env=None):
        started.append((flags, env))
        return start_plain(model, flags, log_dir, index, env)

    monkeypatch.setattr(processes, "start_plain_engine", spy)
    options = _options(tmp_path, evs_rate=0.75, media=(MediaSpec("video", 2),), concurrency=(1,), rounds=2)
    result = runner.run(options)
    assert result["mode"] == "evs" and result["reference"] == "off"
    assert result["levels"]["aim-merge"] == "merge:0.25"
    assert result["levels"]["aim-tokens"] == "merge:0.25,prune:3-5"  # the balanced window the engine gave
    assert result["levels"]["aim-flops"] == "budget:0.2500"  # aim-merge's usage.aim.flops_ratio
    cells = {c["level"]: c for c in result["cells"]}
    assert set(cells) == {"evs", "off", "aim-merge", "aim-tokens", "aim-flops"}
    assert all(c["errors"] == 0 and c["requests"] == 2 for c in cells.values())  # 2 rounds x c=1
    assert cells["evs"]["flops_ratio"] == cells["aim-merge"]["flops_ratio"] == 0.25  # borrowed: no usage.aim
    assert cells["off"]["flops_ratio"] == 1.0 and cells["evs"]["ratio"]["ttft_p50_s"] is not None
    split = {row["level"]: row for row in result["split"]["video2"]}
    assert set(split) == set(cells) and split["evs"]["flops_ratio"] == 0.25
    assert len(started) == 2 and all(flags[-2:] == ["--video-pruning-rate", "0.75"] for flags, _ in started)
    assert all(env["PYTHONPATH"].split(os.pathsep)[0].endswith("bench/evs_cpu") for _, env in started)
    sent = [json.loads(line) for line in fake_engines.read_text().splitlines()]
    assert {"aim_merge_ratio": 0.25, "aim_prune_l1": 3, "aim_prune_l2": 5} in sent
    assert {"aim_budget": 0.25} in sent
    markdown = report.markdown(result)
    assert "is_multimodal_pruning_enabled" in markdown and "prompt tok" in markdown
    assert "transformers < 5.10" not in markdown  # not a Qwen3-VL checkpoint
    report.write_outputs(result, tmp_path / "out")


@pytest.mark.timeout(120)
def test_evs_mode_with_encoder_levels(tmp_path: Path, fake_engines: Path) -> None:
    """--evs-encoder: aim-merge and aim-tokens once more, each with the ViT merging at the keep."""
    options = _options(
        tmp_path, evs_rate=0.75, evs_encoder_keep=0.5, media=(MediaSpec("video", 2),), concurrency=(1,)
    )
    result = runner.run(options)
    assert result["levels"]["aim-merge+encoder"] == "merge:0.25,encoder:0.5"
    assert result["levels"]["aim-tokens+encoder"] == "merge:0.25,prune:3-5,encoder:0.5"
    cells = {c["level"]: c for c in result["cells"]}
    assert {"aim-merge+encoder", "aim-tokens+encoder"} <= set(cells)
    sent = [json.loads(line) for line in fake_engines.read_text().splitlines()]
    assert {"aim_merge_ratio": 0.25, "aim_prune_l1": 3, "aim_prune_l2": 5, "aim_encoder_keep": 0.5} in sent
    assert "aim-tokens+encoder" in report.markdown(result)


@pytest.mark.timeout(120)
def test_evs_mode_times_only_the_chosen_levels(tmp_path: Path, fake_engines: Path) -> None:
    """`evs_levels`: off and the chosen AIM levels run (aim-tokens still resolved from the engine's
    balanced window); the others are neither sent nor reported."""
    options = _options(
        tmp_path, evs_rate=0.75, evs_encoder_keep=0.5, evs_levels=("aim-tokens+encoder",),
        media=(MediaSpec("video", 2),), concurrency=(1,),
    )  # fmt: skip
    result = runner.run(options)
    assert set(result["levels"]) == {"evs", "off", "aim-tokens+encoder"}
    assert result["meta"]["settings"]["levels"] == ["evs", "off", "aim-tokens+encoder"]
    assert result["levels"]["aim-tokens+encoder"] == "merge:0.25,prune:3-5,encoder:0.5"
    assert {c["level"] for c in result["cells"]} == {"evs", "off", "aim-tokens+encoder"}
    sent = [json.loads(line) for line in fake_engines.read_text().splitlines()]
    assert {"aim_budget": 0.25} not in sent  # aim-flops not timed
    assert {"aim_merge_ratio": 0.25, "aim_encoder_keep": 0.5} not in sent  # nor aim-merge+encoder


def test_stock_turns_flags_and_env() -> None:
    """EVS (vLLM's default method) gets the rate alone; VidCom2 also its method; both the CPU fix."""
    evs, vidcom2 = runner.stock_turn("evs", 0.75), runner.stock_turn("vidcom2", 0.75)
    assert evs.flags == ("--video-pruning-rate", "0.75") and evs.plain and evs.name == "evs"
    assert vidcom2.flags == ("--video-pruning-method", "vidcom2", "--video-pruning-rate", "0.75")
    assert vidcom2.plain and [level.label for level in vidcom2.levels] == ["vidcom2"]
    for turn in (evs, vidcom2):
        assert dict(turn.env)["PYTHONPATH"].split(os.pathsep)[0] == str(runner.EVS_CPU_FIX)
    with pytest.raises(ValueError, match="unknown video pruning method"):
        runner.stock_turn("fastv", 0.75)


def _qwen3_vl_config(path: Path, layers: int, deepstack: list[int]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": {"num_hidden_layers": layers, "max_position_embeddings": 4096},
        "vision_config": {"depth": 4, "deepstack_visual_indexes": deepstack},
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_prune_floor_reads_deepstack_levels(tmp_path: Path) -> None:
    qwen3 = _qwen3_vl_config(tmp_path / "q3", 8, [1, 2, 3, 4])
    assert runner.prune_floor(str(qwen3)) == (4, 8)
    (tmp_path / "q25").mkdir()
    (tmp_path / "q25" / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 12}}))
    assert runner.prune_floor(str(tmp_path / "q25")) == (0, 12)
    assert runner.prune_floor("Qwen/Qwen3-VL-8B-Instruct") == (0, None)


@pytest.mark.timeout(120)
def test_evs_mode_with_vidcom2_on_a_deepstack_model(
    tmp_path: Path, fake_engines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EVS and VidCom2 each a stock engine turn; aim-tokens prunes over the window the engine reports
    for balanced (the plugin has moved it past the DeepStack layers); one table compares every level."""
    started = []
    start_plain = processes.start_plain_engine

    def spy(model, flags, log_dir, index=1, env=None):
        started.append(flags)
        return start_plain(model, flags, log_dir, index, env)

    monkeypatch.setattr(processes, "start_plain_engine", spy)
    model = _qwen3_vl_config(tmp_path / "qwen3-vl", 8, [1, 2, 3, 4])
    options = _options(
        tmp_path / "run", model=str(model), evs_rate=0.75, evs_encoder_keep=0.5,
        evs_methods=("evs", "vidcom2"), media=(MediaSpec("video", 2),), concurrency=(1, 2),
    )  # fmt: skip
    result = runner.run(options)
    assert result["evs_methods"] == ["evs", "vidcom2"] and result["first_prune_layer"] == 4
    assert result["levels"]["vidcom2"] == "--video-pruning-method vidcom2 --video-pruning-rate 0.75"
    assert result["levels"]["aim-tokens"] == "merge:0.25,prune:3-5"
    assert result["levels"]["aim-tokens+encoder"] == "merge:0.25,prune:3-5,encoder:0.5"
    cells = {(c["concurrency"], c["level"]): c for c in result["cells"]}
    assert {"evs", "vidcom2", "aim-tokens+encoder"} <= {level for _, level in cells}
    assert all(c["errors"] == 0 for c in cells.values())
    assert cells[(1, "vidcom2")]["flops_ratio"] == 0.25  # aim-merge's: as many tokens in every layer
    assert started == [  # round 0: aim, evs, vidcom2
        ["--video-pruning-rate", "0.75"],
        ["--video-pruning-method", "vidcom2", "--video-pruning-rate", "0.75"],
    ]
    sent = [json.loads(line) for line in fake_engines.read_text().splitlines()]
    assert {"aim_merge_ratio": 0.25, "aim_prune_l1": 3, "aim_prune_l2": 5} in sent
    markdown = report.markdown(result)
    assert "Every level side by side" in markdown and "| video2 | vidcom2 |" in markdown
    assert "TTFT c=2 s" in markdown and "against the better of evs/vidcom2" in markdown
    assert "is_multimodal_pruning_enabled" in markdown and "transformers < 5.10" in markdown
    report.write_outputs(result, tmp_path / "out")


@pytest.mark.timeout(60)
def test_evs_mode_refuses_a_model_with_no_layer_after_deepstack(tmp_path: Path) -> None:
    model = _qwen3_vl_config(tmp_path / "qwen3-vl", 3, [0, 1, 2])
    with pytest.raises(ValueError, match="at least 4"):
        runner.run(
            _options(tmp_path / "run", model=str(model), evs_rate=0.75, media=(MediaSpec("video", 2),))
        )
