"""Training helpers: a patch-local vision tower, per-stage shape sizes, the default curriculum."""

from __future__ import annotations

import dataclasses
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
    """ "colour" is the embedded default's config (its cache key); "local" is patch-local, MC only."""
    assert training.RECIPES["colour"] == training.TrainConfig()
    local = training.RECIPES["local"]
    assert local.patch_local_vision and local.types == ("colour",)
    assert all(stage.free_form == 0.0 and stage.colour_size == (16, 48) for stage in local.stages)


@pytest.mark.parametrize("recipe", ["colour", "local"])
def test_cli_trains_the_recipe(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from aim_vllm.cli import main

    seen = []

    def fake_train(out: Path, config, threads=None) -> None:
        seen.append(config)
        (out / "training.json").write_text('{"train_wall_s": 1.0, "eval": {"accuracy": 1.0}}')

    monkeypatch.setattr(training, "train", fake_train)
    out = tmp_path / "model"
    out.mkdir()
    assert main(["train-synthetic", str(out), "--recipe", recipe, "--seed", "3"]) == 0
    assert seen == [dataclasses.replace(training.RECIPES[recipe], seed=3)]
    assert str(out) in capsys.readouterr().out
