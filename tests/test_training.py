"""Training helpers: a patch-local vision tower, per-stage shape sizes, the default curriculum."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from aim_vllm import synthetic, training


def test_patch_local_vision_tower_sees_one_patch_per_token(tiny_model_dir: Path) -> None:
    """After `make_patch_local`, changing one 14x14 patch changes that patch's features only;
    the stock tower (the control) spreads the change to every patch."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tower = model.model.vision_tower
    pixels = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    changed = pixels.clone()
    changed[:, :, 14 * 5 : 14 * 6, 14 * 7 : 14 * 8] += 1.0  # patch (row 5, column 7) of 27 x 27

    def moved(tower) -> torch.Tensor:
        with torch.no_grad():
            a, b = (tower(p).last_hidden_state[0] for p in (pixels, changed))
        return (a - b).abs().amax(dim=-1)  # [729] largest change per patch

    stock = moved(tower)
    assert (stock > 1e-4).sum() > 700  # attention mixes the change into (nearly) every patch
    training.make_patch_local(tower)
    local = moved(tower)
    target = 5 * 27 + 7
    assert local[target] > 1e-2 and float(local[torch.arange(729) != target].max()) == 0.0
    frozen = [n for n, p in tower.named_parameters() if not p.requires_grad]
    assert frozen and all(".self_attn." in n for n in frozen)
    assert all(p.requires_grad for n, p in tower.named_parameters() if "mlp" in n or "embeddings" in n)


@pytest.mark.parametrize("size", [(16, 24), (56, 96)])
def test_stage_colour_size_sets_the_training_shapes(size: tuple[int, int]) -> None:
    """A stage's `colour_size` reaches the scenes of its steps (one shape per colour question)."""
    stage = training.Stage(4, (1,), types=("colour",), colour_size=size)
    config = training.TrainConfig(stages=(stage,), batch_size=8)
    for step in range(2):
        _, _, examples = training.batch_at(config, step)
        sizes = [shape.size for scene, _, _ in examples for shape in scene.shapes]
        assert len(sizes) == 8 and all(size[0] <= s < size[1] for s in sizes)


def test_training_example_default_size_matches_the_data_sets() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene, _ = synthetic.training_example(rng, False, 1, 0.0, ("colour",))
        low, high = synthetic.COLOUR_SIZE
        assert low <= scene.shapes[0].size < high


def test_recipes() -> None:
    """ "colour" (alias "embedded") is the embedded default's config (its cache key); "local" is
    patch-local, MC only, a curriculum from large shapes through mixed sizes to 16-47 px shapes
    (without the mixed stage it stalled on an AVX-512 Xeon), and may stop at its target."""
    assert training.RECIPES["colour"] == training.RECIPES["embedded"] == training.TrainConfig()
    local = training.RECIPES["local"]
    assert local.patch_local_vision and local.types == ("colour",)
    assert all(stage.free_form == 0.0 for stage in local.stages)
    assert local.stages[-1].colour_size == (16, 48) and local.stages[0].colour_size[0] > 16
    middle = local.stages[1].colour_size
    assert middle[0] == 16 and middle[1] >= local.stages[0].colour_size[1]  # small and large together
    assert local.early_stop and local.max_steps > local.total_steps


def _config(**kw) -> training.TrainConfig:
    stages = (training.Stage(20, (1,)), training.Stage(30, (1, 2)))
    return training.TrainConfig(stages=stages, warmup_steps=5, probe_every=10, **kw)


def test_steps_past_the_stages_continue_the_last_one() -> None:
    """Extension steps (a run below its target) draw the last stage's mixture; past `max_steps`
    there is no step to draw."""
    config = _config(extra_steps=15)
    assert training.stage_at(config, 19) is config.stages[0]
    assert training.stage_at(config, 50) is training.stage_at(config, 64) is config.stages[-1]
    with pytest.raises(ValueError, match="outside"):
        training.stage_at(config, 65)
    with pytest.raises(ValueError):
        training.stage_at(_config(extra_steps=0), 50)


def test_learning_rate_warms_up_decays_then_cycles() -> None:
    """Warmup to `lr`, cosine to `min_lr` at the stages' end, then cycles that restart at lr / 4."""
    config = _config(extra_steps=30)
    rates = [training.learning_rate(config, step) for step in range(config.max_steps)]
    assert rates[0] == pytest.approx(config.lr / 5) and max(rates[:50]) == pytest.approx(config.lr, rel=0.02)
    assert rates[49] == pytest.approx(config.min_lr)
    assert rates[50] == rates[60] == pytest.approx(config.lr / 4)  # a cycle per probe interval
    assert all(config.min_lr <= r <= config.lr / 4 for r in rates[50:])
    assert all(a >= b for a, b in zip(rates[50:60], rates[51:60], strict=False))


@pytest.mark.parametrize(
    ("early_stop", "step", "accuracy", "stop"),
    [
        (False, 20, 1.0, False),  # the stages run to their end unless early stopping is on
        (True, 20, 0.95, False),  # early stopping waits for the last stage (steps 20-49) ...
        (True, 10, 0.95, False),
        (True, 30, 0.95, True),  # ... and stops inside it at the target
        (True, 30, 0.5, False),
        (False, 50, 0.95, True),  # the stages' end at the target
        (False, 50, 0.5, False),  # below it: continue past the stages
        (False, 60, 0.5, False),
        (False, 65, 0.5, True),  # ... up to max_steps
    ],
)
def test_should_stop(early_stop: bool, step: int, accuracy: float, stop: bool) -> None:
    config = _config(early_stop=early_stop, extra_steps=15)
    assert training.should_stop(config, step, accuracy) is stop


def test_probes_fall_on_the_interval_the_stages_end_and_the_last_step() -> None:
    config = _config(extra_steps=15)
    due = [step for step in range(1, config.max_steps + 1) if training.probe_due(config, step)]
    assert due == [10, 20, 30, 40, 50, 60, 65]


def test_read_curve_keeps_a_resumed_runs_latest_probe(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [
        {"step": 1, "loss": 2.0},
        {"step": 10, "probe_accuracy": 0.25},
        {"step": 20, "probe_accuracy": 0.5},
        {"step": 20, "probe_accuracy": 0.75},
    ]
    log.write_text("".join(f"{json.dumps(line)}\n" for line in lines))
    assert [(p["step"], p["probe_accuracy"]) for p in training.read_curve(log)] == [(10, 0.25), (20, 0.75)]
    assert training.read_curve(tmp_path / "missing.jsonl") == []


def test_deterministic_seeds_and_restores_torch_state() -> None:
    """Inside: seeded RNG, deterministic algorithms, the thread count; outside: as it was."""
    import torch

    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()
    with training.deterministic(7, 1):
        first = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    with training.deterministic(7, 1):
        assert torch.equal(torch.rand(3), first)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == flag
    assert torch.equal(torch.random.get_rng_state(), state)


def test_machine_record_reads_the_cpu_flags() -> None:
    record = training.machine_record()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert record["avx2"] == (" avx2" in flags)
    assert bool(record["avx512"]) == (" avx512" in flags)
    assert record["torch"] and record["transformers"] and record["torch_cpu_capability"]


def test_machine_record_names_the_instruction_set_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that caps the kernels (to train as an AVX2 machine would) says so in training.json."""
    for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert training.machine_record()["isa_limits"] == {}
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert training.machine_record()["isa_limits"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.parametrize("recipe", ["colour", "local", "qwen-position", "qwen3-colour", "qwen3-position"])
def test_cli_trains_the_recipe(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from aim_vllm.cli import main

    seen = []

    monkeypatch.setattr(training, "train", _fake_train({3: 1.0}, {3: 1.0}, seen))
    out = tmp_path / "model"
    out.mkdir()
    assert main(["train-synthetic", str(out), "--recipe", recipe, "--seed", "3"]) == 0
    assert seen == [dataclasses.replace(training.RECIPES[recipe], seed=3)]  # converged: one seed
    assert training.RECIPES[recipe].seeds >= 2  # a stalled first seed would get another
    assert str(out) in capsys.readouterr().out


def _fake_train(probes: dict[int, float], evals: dict[int, float], seen: list | None = None):
    """A `training.train` that writes a record with one probe per seed and the seed as its weights."""

    def fake_train(out: Path, config, threads=None) -> None:
        if seen is not None:
            seen.append(config)
        curve = [{"step": 10, "probe_accuracy": probes[config.seed]}]
        record = {"config": config.to_json(), "steps": 10, "train_wall_s": 1.0, "curve": curve,
                  "eval": {"accuracy": evals[config.seed]}}  # fmt: skip
        (out / "training.json").write_text(json.dumps(record))
        (out / "model.safetensors").write_text(f"seed {config.seed}")

    return fake_train


def _tiny_run(**kw) -> training.TrainConfig:
    stage = training.Stage(3, (1,), types=("colour",), free_form=0.0)
    return training.TrainConfig(
        stages=(stage,), batch_size=2, warmup_steps=1, probe_every=2, probe_items=2, eval_items=2, **kw
    )


@pytest.mark.slow  # ~25 s on a loaded 2-core machine (four probes of 8-frame videos / anyres images)
def test_train_records_the_curve_machine_and_stops_at_its_bound(tmp_path: Path) -> None:
    """A run whose target is out of reach probes after steps 2, 3 (the stages' end), 4 and 5 and
    stops at `max_steps`; training.json has the curve, the CPU flags and the versions."""
    metrics = training.train(tmp_path, _tiny_run(target_accuracy=1.1, extra_steps=2))
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == metrics["steps"] == 5
    assert [point["step"] for point in record["curve"]] == [2, 3, 4, 5]
    assert record["machine"]["torch"] and isinstance(record["machine"]["avx512"], list)
    assert record["config"]["extra_steps"] == 2 and not (tmp_path / "_train").exists()


def test_train_stops_early_at_its_target(tmp_path: Path) -> None:
    """With early stopping, the first probe at or above the target ends the run (target 0: step 2)."""
    metrics = training.train(tmp_path, _tiny_run(target_accuracy=0.0, early_stop=True, extra_steps=2))
    assert metrics["steps"] == 2 and len(metrics["curve"]) == 1


def test_best_of_seeds_keeps_the_best_probe_and_lists_every_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 5's probe is best (0.9) while seed 4's final eval is higher: the probe chooses, so the
    reported eval accuracy is not the maximum of several draws."""
    probes, evals = {3: 0.5, 4: 0.75, 5: 0.85}, {3: 0.5, 4: 0.95, 5: 0.85}
    monkeypatch.setattr(training, "train", _fake_train(probes, evals))
    record = training.train_best_of(tmp_path, dataclasses.replace(training.TrainConfig(), seed=3), 3)
    assert record["config"]["seed"] == 5 and record["eval"]["accuracy"] == 0.85
    assert [(r["seed"], r["probe_accuracy"]) for r in record["seeds"]] == [(3, 0.5), (4, 0.75), (5, 0.85)]
    assert (tmp_path / "model.safetensors").read_text() == "seed 5" and not (tmp_path / "_seeds").exists()
    with pytest.raises(ValueError):
        training.train_best_of(tmp_path, training.TrainConfig(), 0)


def test_seeds_stop_at_the_first_that_meets_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 0 stalls (0.75), seed 1 meets the target (0.9): seed 2 never trains; the recipe's
    `seeds` is the bound when none is given."""
    seen: list = []
    monkeypatch.setattr(
        training, "train", _fake_train({0: 0.75, 1: 0.95, 2: 1.0}, {0: 0.7, 1: 0.9, 2: 1.0}, seen)
    )
    record = training.train_best_of(tmp_path, dataclasses.replace(training.TrainConfig(), seeds=3))
    assert [config.seed for config in seen] == [0, 1]
    assert record["config"]["seed"] == 1 and [r["seed"] for r in record["seeds"]] == [0, 1]
    assert (tmp_path / "model.safetensors").read_text() == "seed 1"


# ---------------------------------------------------------------- the Qwen2.5-VL path


def test_qwen_position_recipe() -> None:
    """A patch-local Qwen2.5-VL on position questions (images, letters), with a RoPE base at which
    M-RoPE's width section turns measurably per column."""
    recipe = training.RECIPES["qwen-position"]
    assert recipe.arch == "qwen2.5-vl" and recipe.patch_local_vision and recipe.types == ("position",)
    assert all(stage.image == 1.0 and stage.free_form == 0.0 for stage in recipe.stages)
    assert recipe.rope_theta is not None and recipe.rope_theta < 1e3
    assert training.TrainConfig().arch == "llava-onevision" and training.TrainConfig().rope_theta is None


def test_qwen_patch_local_vision_gives_each_token_its_own_pixels() -> None:
    """After `make_patch_local`, changing one 14x14 patch changes only the LLM token (2x2 patches)
    that holds it; the stock ViT (the control) spreads the change to other tokens."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from aim_vllm.model_builders import default_model_dir

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        default_model_dir("qwen2.5-vl"), dtype=torch.float32
    )
    visual, grid = model.model.visual, torch.tensor([[1, 8, 8]])  # 8x8 patches: 4x4 tokens
    pixels = torch.randn(64, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    changed = pixels.clone()
    changed[4 * 5 + 2] += 1.0  # one patch of token 5 (patches come grouped by token, 4 each)

    def moved() -> torch.Tensor:
        with torch.no_grad():
            a, b = (visual(p, grid_thw=grid).pooler_output for p in (pixels, changed))
        return (a - b).abs().amax(dim=-1)  # [16] largest change per token

    assert (moved() > 1e-4).sum() > 1
    training.make_patch_local(visual, "qwen2.5-vl")
    local = moved()
    assert local[5] > 1e-3 and float(local[torch.arange(16) != 5].max()) == 0.0
    frozen = [n for n, p in visual.named_parameters() if not p.requires_grad]
    assert frozen and all(".attn." in n for n in frozen)


def test_train_qwen_writes_a_checkpoint_vllm_loads(tmp_path: Path) -> None:
    """A few steps of the Qwen path: the checkpoint keeps transformers 5 names (vLLM's loader maps
    them), the recipe's RoPE base, and the zeroed ViT attention; training.json as for LLaVA."""
    from safetensors.torch import load_file

    stage = training.Stage(2, (1,), image=1.0, types=("position",), free_form=0.0)
    config = training.TrainConfig(
        stages=(stage,), batch_size=2, warmup_steps=1, probe_every=2, probe_items=2, eval_items=2,
        extra_steps=0, arch="qwen2.5-vl", rope_theta=20.0, patch_local_vision=True,
    )  # fmt: skip
    metrics = training.train(tmp_path, config)
    assert metrics["steps"] == 2 and metrics["eval"]["by_type"].keys() == {"position"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert saved["text_config"]["rope_parameters"]["rope_theta"] == 20.0
    weights = load_file(tmp_path / "model.safetensors")
    assert any(n.startswith("model.language_model.") for n in weights)
    proj = [n for n in weights if n.startswith("model.visual.blocks.") and ".attn.proj." in n]
    assert proj and all(float(weights[n].abs().max()) == 0.0 for n in proj)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["config"]["arch"] == "qwen2.5-vl" and not (tmp_path / "_train").exists()


# ---------------------------------------------------------------- the Qwen3-VL path


def test_qwen3_recipes() -> None:
    """Both Qwen3-VL recipes are patch-local and multiple choice; the colour one follows `local`'s
    curriculum on images and one-slice videos, the position one is `qwen-position` on Qwen3-VL."""
    colour, position = training.RECIPES["qwen3-colour"], training.RECIPES["qwen3-position"]
    assert (
        colour.arch == position.arch == "qwen3-vl"
        and colour.patch_local_vision
        and position.patch_local_vision
    )
    assert colour.types == ("colour",) and position.types == ("position",)
    assert [s.colour_size for s in colour.stages] == [s.colour_size for s in training.RECIPES["local"].stages]
    assert all(s.frames == (2,) and 0.0 < s.image < 1.0 and s.free_form == 0.0 for s in colour.stages)
    assert colour.rope_theta is None and colour.early_stop
    assert position == dataclasses.replace(training.RECIPES["qwen-position"], arch="qwen3-vl")
    assert position.rope_theta is not None and position.rope_theta < 1e3


def test_qwen3_patch_local_vision_gives_each_token_its_own_pixels() -> None:
    """After `make_patch_local`, changing one 16x16 patch changes only the LLM token (2x2 patches)
    that holds it, in the merged features and in every DeepStack feature; the position embedding
    is zeroed and frozen. The stock ViT (the control) spreads the change to other tokens."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from aim_vllm.model_builders import default_model_dir

    model = Qwen3VLForConditionalGeneration.from_pretrained(
        default_model_dir("qwen3-vl"), dtype=torch.float32
    )
    visual, grid = model.model.visual, torch.tensor([[1, 8, 8]])  # 8x8 patches: 4x4 tokens
    pixels = torch.randn(64, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(0))
    changed = pixels.clone()
    changed[4 * 5 + 2] += 1.0  # one patch of token 5 (patches come grouped by token, 4 each)

    def moved() -> list[torch.Tensor]:
        """[16] largest change per token: merged features, then each DeepStack feature."""
        with torch.no_grad():
            a, b = (visual(p, grid_thw=grid) for p in (pixels, changed))
        pairs = [
            (a.pooler_output, b.pooler_output),
            *zip(a.deepstack_features, b.deepstack_features, strict=True),
        ]
        return [(x - y).abs().amax(dim=-1) for x, y in pairs]

    stock = moved()
    assert len(stock) == 4 and all((m > 1e-6).sum() > 1 for m in stock)
    training.make_patch_local(visual, "qwen3-vl")
    for local in moved():
        assert local[5] > 1e-3 and float(local[torch.arange(16) != 5].max()) == 0.0
    frozen = [n for n, p in visual.named_parameters() if not p.requires_grad]
    assert "pos_embed.weight" in frozen and all(".attn." in n for n in frozen if n != "pos_embed.weight")
    assert float(visual.pos_embed.weight.abs().max()) == 0.0


@pytest.mark.parametrize(
    ("frames", "stamps"), [(2, ["<0.5 seconds>"]), (8, ["<0.5 seconds>", "<2.5 seconds>"])]
)
def test_qwen3_video_timestamps_are_vllms(frames: int, stamps: list[str]) -> None:
    """A training video's `<t seconds>` text is vLLM's for a `video/jpeg` data URL (fps 1, frames
    0..F-1): one per temporal slice (2 frames), the mean time of its frames."""
    from transformers import Qwen3VLProcessor

    from aim_vllm.model_builders import default_model_dir

    processor = Qwen3VLProcessor.from_pretrained(default_model_dir("qwen3-vl"))
    video = np.zeros((frames, 64, 64, 3), np.uint8)
    inputs, labels = training.encode(processor, video, True, [("Which colour?", "A")], "qwen3-vl")
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("seconds>") == frames // 2 and all(stamp in text for stamp in stamps)
    assert int(inputs["video_grid_thw"][0, 0]) == frames // 2
    assert processor.tokenizer.decode(labels[labels != -100]) == "A<|im_end|>"


def test_train_qwen3_writes_a_checkpoint_transformers_loads(tmp_path: Path) -> None:
    """Two steps of the Qwen3-VL path (a 2-frame video, then an image): the checkpoint loads in
    transformers with the trained weights, the recipe's RoPE base and interleaved M-RoPE, the
    zeroed ViT attention and position embedding, and DeepStack as built."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen3VLForConditionalGeneration

    from aim_vllm.model_builders import default_model_dir

    stages = (
        training.Stage(1, (2,), image=0.0, types=("colour",), free_form=0.0),
        training.Stage(1, (2,), image=1.0, types=("colour",), free_form=0.0),
    )
    config = training.TrainConfig(
        stages=stages, batch_size=2, warmup_steps=1, probe_every=2, probe_items=2, eval_items=2,
        extra_steps=0, arch="qwen3-vl", rope_theta=20.0, patch_local_vision=True,
    )  # fmt: skip
    assert [training.batch_at(config, step)[:2] for step in range(2)] == [(True, 2), (False, 2)]
    metrics = training.train(tmp_path, config)
    assert metrics["steps"] == 2 and metrics["eval"]["by_type"].keys() == {"colour"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["Qwen3VLForConditionalGeneration"]
    rope = saved["text_config"]["rope_parameters"]
    assert rope["rope_theta"] == 20.0 and rope["mrope_interleaved"] and rope["mrope_section"] == [6, 5, 5]
    assert saved["vision_config"]["deepstack_visual_indexes"] == [0, 1, 2]
    weights = load_file(tmp_path / "model.safetensors")
    init = load_file(default_model_dir("qwen3-vl") / "model.safetensors")  # seed 0, as build_init
    assert weights.keys() == init.keys()  # the builder's names (vLLM's loader maps them)
    moved = [n for n in weights if not torch.equal(weights[n], init[n])]
    assert any(n.startswith("model.language_model.") for n in moved) and "lm_head.weight" in moved
    proj = [n for n in weights if n.startswith("model.visual.blocks.") and ".attn.proj." in n]
    assert proj and all(float(weights[n].abs().max()) == 0.0 for n in proj)
    assert float(weights["model.visual.pos_embed.weight"].abs().max()) == 0.0
    model = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"])
    assert model.config.text_config.rope_parameters["rope_theta"] == 20.0
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["config"]["arch"] == "qwen3-vl" and not (tmp_path / "_train").exists()


def test_tied_lm_head_is_written_once_and_stays_tied(tmp_path: Path) -> None:
    """A tied LM head (Qwen3-VL 2B/4B) is one tensor: the checkpoint stores the embedding alone
    (as the builder does) and transformers ties it again on load."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3VLForConditionalGeneration

    from aim_vllm.model_builders import build_model

    init = tmp_path / "init"
    build_model(init, "qwen3-vl", "tiny")
    path = init / "config.json"
    record = json.loads(path.read_text())
    record["tie_word_embeddings"] = record["text_config"]["tie_word_embeddings"] = True
    path.write_text(json.dumps(record))
    weights = load_file(init / "model.safetensors")
    del weights["lm_head.weight"]  # a tied checkpoint holds the embedding alone
    save_file(weights, init / "model.safetensors", metadata={"format": "pt"})
    model = Qwen3VLForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # "trained"
    out = tmp_path / "out"
    out.mkdir()
    training._write_checkpoint(model, init, out, training.RECIPES["qwen3-colour"], {})
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    loaded = Qwen3VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
