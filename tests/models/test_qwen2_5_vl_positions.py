"""Qwen2.5-VL M-RoPE positions of merged prompts: the engine's override == the reference's rule.

The engine fixes positions when a request is added (`get_mrope_input_positions`, from
placeholder ranges and grids only); the reference writes them out independently. Multi-item
prompts with different ratios (and unmerged items among them) must agree exactly, and a prompt
without AIM parameters must get vLLM's own positions.
"""

from __future__ import annotations

import pytest
import torch

from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.models.qwen2_5_vl import AimQwen2_5_VLForConditionalGeneration
from aim_vllm.reference.qwen2_5_vl import QwenItem, mrope_positions

IMAGE_ID, VIDEO_ID, MERGE, TOKENS_PER_SECOND = 7, 8, 2, 2
SECONDS_PER_SLICE = 2.0


@pytest.fixture(scope="module")
def model():
    """The AIM model class with only its config (the position code reads nothing else)."""
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(
        vision_config={"spatial_merge_size": MERGE, "tokens_per_second": TOKENS_PER_SECOND},
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
    )
    instance = object.__new__(AimQwen2_5_VLForConditionalGeneration)
    object.__setattr__(instance, "config", config)
    return instance


def _elem(data: torch.Tensor):
    from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem

    return MultiModalFieldElem(data=data, field=MultiModalBatchedField())


def _feature(modality: str, grid: tuple[int, int, int], ratio: float | None, offset: int, length: int):
    from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalKwargsItem, PlaceholderRange

    data = {f"{modality}_grid_thw": _elem(torch.tensor(grid))}
    if modality == "video":
        data["second_per_grid_ts"] = _elem(torch.tensor(SECONDS_PER_SLICE))
    if ratio is not None:
        t, h, w = grid
        data[field_name(modality)] = _elem(ItemParams(AimSchedule(ratio), t * h * w // 4).to_tensor())
    return MultiModalFeatureSpec(
        data=MultiModalKwargsItem(data),
        modality=modality,
        identifier=f"{modality}-{offset}",
        mm_position=PlaceholderRange(offset=offset, length=length),
    )


def _prompt(items: list[tuple[str, tuple[int, int, int], float | None]], texts: list[int]):
    """Token ids, features and reference items of text runs (lengths `texts`) around the items."""
    ids, features, reference_items = [100] * texts[0], [], []
    for (modality, grid, ratio), text in zip(items, texts[1:], strict=True):
        t, h, w = grid
        n = (h // MERGE) * (w // MERGE)
        k = n if ratio is None else merged_token_count(n, ratio)
        features.append(_feature(modality, grid, ratio, len(ids), t * k))
        interval = SECONDS_PER_SLICE * TOKENS_PER_SECOND if modality == "video" else 1.0
        reference_items.append(QwenItem(torch.zeros(t * k, 1), grid, interval, k))
        ids += [IMAGE_ID if modality == "image" else VIDEO_ID] * (t * k) + [101] * text
    return ids, features, reference_items


CASES = {
    "image": ([("image", (1, 22, 28), 0.3)], [5, 4]),
    "video": ([("video", (4, 14, 14), 0.25)], [5, 0]),
    "image+video": ([("image", (1, 22, 28), 0.5), ("video", (4, 14, 14), 0.3)], [5, 4, 6]),
    "merged+unmerged": ([("video", (4, 14, 14), None), ("image", (1, 16, 12), 0.125)], [3, 2, 7]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_engine_positions_equal_reference(model, case: str) -> None:
    ids, features, items = _prompt(*CASES[case])
    positions, delta = model.get_mrope_input_positions(ids, features)
    expected, expected_delta = mrope_positions(ids, items, (IMAGE_ID, VIDEO_ID), MERGE)
    assert torch.equal(positions, expected)
    assert delta == expected_delta


def test_without_aim_parameters_positions_are_stock(model) -> None:
    """AIM off: the override returns exactly what vLLM's own method returns."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    ids, features, items = _prompt([("image", (1, 22, 28), None), ("video", (4, 14, 14), None)], [5, 4, 6])
    ours = model.get_mrope_input_positions(ids, features)
    stock = Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, ids, features)
    assert torch.equal(ours[0], stock[0]) and ours[1] == stock[1]
    assert torch.equal(ours[0], mrope_positions(ids, items, (IMAGE_ID, VIDEO_ID), MERGE)[0])


def test_text_after_a_merged_item_keeps_its_unmerged_positions(model) -> None:
    """Merging shortens the prompt, not the positions of the text that follows."""
    unmerged = _prompt([("video", (4, 14, 14), None)], [5, 6])
    merged = _prompt([("video", (4, 14, 14), 0.25)], [5, 6])
    full, _ = model.get_mrope_input_positions(unmerged[0], unmerged[1])
    short, delta = model.get_mrope_input_positions(merged[0], merged[1])
    assert torch.equal(short[:, -6:], full[:, -6:])
    assert delta == int(full.max()) + 1 - len(merged[0])


# -- after the encoder: merged tokens at their survivors' positions -------------------------------

WIDTH = 6  # embedding channels of the synthetic items below


def _merged_prompt(seed: int):
    """A prompt of text, a merged video (2 slices of a 6 x 8 grid at 0.25), text, an unmerged image
    and text; its count-based positions; the video's raw features; and the items' embeddings as
    the model hands them to the runner (survivor channels on the merged one)."""
    from aim_vllm.core import position_channels
    from aim_vllm.models.qwen2_5_vl import merge_item, survivor_channels

    ids, features, items = _prompt([("video", (2, 12, 16), 0.25), ("image", (1, 4, 6), None)], [4, 3, 2])
    positions, _ = mrope_positions(ids, items, (IMAGE_ID, VIDEO_ID), MERGE)
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(2, 16, 1, WIDTH, generator=generator).repeat_interleave(3, 2).flatten(1, 2)
    raw = raw + 0.3 * torch.randn(2, 48, WIDTH, generator=generator)  # (slices, 6 x 8 tokens, C)
    merged, origin = merge_item(raw.flatten(0, 1), 2, 0.25)
    video = position_channels.attach(merged, survivor_channels(origin, 8))
    image = torch.randn(6, WIDTH, generator=generator)
    return ids, items, positions, raw, [video, image]


def _survivor_positions(ids, items, raw):
    """The expected positions, survivors chosen by the paper's definition written out on its own."""
    from tests.core.test_merge_definition import merge_by_definition

    k = items[0].merged_per_slice
    origin = torch.tensor([merge_by_definition(raw[s].double().tolist(), k)[1] for s in range(2)])
    items[0] = QwenItem(items[0].embedding, items[0].grid_thw, items[0].time_interval, k, origin)
    return mrope_positions(ids, items, (IMAGE_ID, VIDEO_ID), MERGE)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recomputed_positions_are_the_survivors(seed: int) -> None:
    """Each merged token's (t, h, w) is its survivor's; text and the unmerged image keep theirs."""
    from aim_vllm.models.qwen2_5_vl import content_positions

    ids, items, positions, raw, embeddings = _merged_prompt(seed)
    stripped, got = content_positions(
        torch.tensor(ids), embeddings, positions, 0, (IMAGE_ID, VIDEO_ID), WIDTH
    )
    expected = _survivor_positions(ids, items, raw)
    assert not torch.equal(positions, expected)  # the count-based placeholders were not already right
    assert torch.equal(got, expected)
    assert [e.shape[1] for e in stripped] == [WIDTH, WIDTH]
    torch.testing.assert_close(stripped[0], embeddings[0][:, :WIDTH])


@pytest.mark.parametrize("split", [4, 9, 30, 33])
def test_chunked_and_repeated_recomputes_agree(split: int) -> None:
    """A prefill split at any token (inside the video or the image too), and a second pass over the
    whole prompt (a preempted request computed again), give the positions of one pass."""
    from aim_vllm.models.qwen2_5_vl import content_positions

    ids, items, positions, raw, embeddings = _merged_prompt(3)
    expected = _survivor_positions(ids, items, raw)
    media = (IMAGE_ID, VIDEO_ID)
    starts = [ids.index(VIDEO_ID), ids.index(IMAGE_ID)]
    cuts = [min(max(0, split - start), e.shape[0]) for start, e in zip(starts, embeddings, strict=True)]
    first = [e[:cut] for e, cut in zip(embeddings, cuts, strict=True) if cut > 0]
    rest = [e[cut:] for e, cut in zip(embeddings, cuts, strict=True) if cut < e.shape[0]]
    _, once = content_positions(torch.tensor(ids), first, positions, 0, media, WIDTH)
    _, twice = content_positions(torch.tensor(ids), rest, once, split, media, WIDTH)
    assert torch.equal(twice, expected)
    _, again = content_positions(torch.tensor(ids), embeddings, twice, 0, media, WIDTH)
    assert torch.equal(again, expected)


def test_runner_patch_turns_the_recompute_on_for_aim_models_only() -> None:
    """`patches` item 3: the runner's flag is set after loading an AIM Qwen model, never otherwise."""
    from aim_vllm.patches import _with_positions_after_encoder

    class Runner:
        uses_mrope = True
        is_multimodal_pruning_enabled = False

        def __init__(self, model):
            self.model = model

        def get_model(self):
            return self.model

    load = _with_positions_after_encoder(lambda self: None)
    aim = object.__new__(AimQwen2_5_VLForConditionalGeneration)
    runner = Runner(aim)
    load(runner)
    assert runner.is_multimodal_pruning_enabled and aim.aim_positions_after_encoder
    other = Runner(torch.nn.Linear(1, 1))
    load(other)
    assert not other.is_multimodal_pruning_enabled
