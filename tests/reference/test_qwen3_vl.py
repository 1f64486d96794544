"""The Qwen3-VL reference: AIM off == transformers' own model (its processor's prompt with
timestamps, its M-RoPE index, its DeepStack path); merged prompts keep the survivors' positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.reference.qwen3_vl import Qwen3VLReference

PROMPT = "<|im_start|>user\n<|vision_start|>{pad}<|vision_end|>What colour is the square?<|im_end|>\n"


@pytest.fixture(scope="module")
def reference() -> Qwen3VLReference:
    from aim_vllm.model_builders import default_model_dir

    return Qwen3VLReference(default_model_dir("qwen3-vl"))


def _data(kind: str):
    rng = np.random.default_rng(0)
    if kind == "image":
        return Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))
    return (rng.random((4, 384, 384, 3)) * 255).astype("uint8")


def _hf_inputs(reference: Qwen3VLReference, kind: str, data) -> dict:
    """transformers' own processing of a one-item prompt (unmerged; a video's timestamps at 1 fps)."""
    if kind == "image":
        return reference.processor(
            text=[PROMPT.format(pad="<|image_pad|>")], images=[data], return_tensors="pt"
        )
    metadata = {"fps": 1.0, "total_num_frames": len(data), "frames_indices": list(range(len(data)))}
    return reference.processor(
        text=[PROMPT.format(pad="<|video_pad|>")],
        videos=[data],
        video_metadata=[metadata],
        do_sample_frames=False,
        return_tensors="pt",
    )


@pytest.mark.parametrize("kind", ["image", "video"])
def test_unmerged_reference_is_transformers(reference, kind) -> None:
    """Ratio 1: the reference's positions and logits equal transformers' forward of the same
    prompt (its get_rope_index, its DeepStack injection), so the reference's own rule and its
    handling of the tower's DeepStack rows are checked against an independent implementation."""
    data = _data(kind)
    inputs = _hf_inputs(reference, kind, data)
    ids = inputs["input_ids"][0].tolist()
    item = reference.item(kind, data, 1.0)
    positions, _ = reference.positions(ids, [item])
    hf_positions, _ = reference.hf.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
    )
    torch.testing.assert_close(positions, hf_positions[:, 0], rtol=0, atol=0)
    with torch.no_grad():
        want = reference.hf(**inputs).logits[0]
    torch.testing.assert_close(reference.logits(ids, [item], positions), want, rtol=0, atol=1e-5)


def test_merged_tokens_sit_at_their_survivors(reference) -> None:
    """A merged video's token j of slice s has the unmerged prompt's position of its survivor
    `origin[s, j]`; the timestamp text and the text after keep their unmerged positions."""
    data = _data("video")
    inputs = _hf_inputs(reference, "video", data)
    ids = inputs["input_ids"][0].tolist()
    video_id = reference.hf.config.video_token_id
    full, _ = reference.positions(ids, [reference.item("video", data, 1.0)])
    item = reference.item("video", data, 0.25)
    k = item.merged_per_slice
    merged_ids, keep, run = [], [], -1
    for i, token in enumerate(ids):  # the merged prompt: each run's first k placeholders
        run = run + 1 if token == video_id else -1
        if token != video_id or run < k:
            merged_ids.append(token)
            keep.append(i)
    positions, _ = reference.positions(merged_ids, [item])
    rows = torch.tensor(merged_ids) == video_id
    torch.testing.assert_close(positions[:, ~rows], full[:, torch.tensor(keep)][:, ~rows], rtol=0, atol=0)
    starts = [i for i, token in enumerate(ids) if token == video_id and ids[i - 1] != video_id]
    survivors = torch.tensor(
        [
            start + int(j)
            for start, slice_origin in zip(starts, item.origin, strict=True)
            for j in slice_origin
        ]
    )
    torch.testing.assert_close(positions[:, rows], full[:, survivors], rtol=0, atol=0)


@pytest.fixture(scope="module")
def deep_reference(tmp_path_factory) -> Qwen3VLReference:
    from aim_vllm.model_builders import default_model_dir
    from tests.engine.qwen3.checkpoints import deeper_checkpoint

    return Qwen3VLReference(
        deeper_checkpoint(default_model_dir("qwen3-vl"), tmp_path_factory.mktemp("deep") / "m")
    )


@pytest.mark.parametrize("kind", ["image", "video"])
def test_removal_loop_without_pruning_is_transformers(deep_reference, kind) -> None:
    """The removal loop (`prefill` / `decode`, transformers' layer modules written out: q/k norms,
    interleaved M-RoPE, DeepStack after layers 0..L-1, a per-layer cache) with nothing pruned
    equals transformers' own forward of the whole sequence, prompt and teacher-forced decodes."""
    data = _data(kind)
    ids = _hf_inputs(deep_reference, kind, data)["input_ids"][0].tolist()
    item = deep_reference.item(kind, data, 0.5)
    ids = _merged_prompt(deep_reference, ids, item)
    positions, offset = deep_reference.positions(ids, [item])
    logits, cache, _ = deep_reference.prefill(ids, [item], positions, AimSchedule(0.5))
    want = deep_reference.logits(ids, [item], positions)[-1]
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
    for token in (5, 17):
        n = len(ids)
        logits = deep_reference.decode(cache, token, n + offset)
        ids = [*ids, token]
        positions = torch.cat([positions, torch.full((3, 1), n + offset)], dim=1)
        torch.testing.assert_close(
            logits, deep_reference.logits(ids, [item], positions)[-1], rtol=0, atol=1e-5
        )


def test_pruning_drops_rows_from_layer_l_only(deep_reference) -> None:
    """A schedule from layer L = 3 on drops rows after layers 3, 4, 5 (kept counts of the
    schedule) and changes the answer; one starting earlier is refused (its pruned rows would
    still need their DeepStack rows)."""
    data = _data("image")
    ids = _hf_inputs(deep_reference, "image", data)["input_ids"][0].tolist()
    item = deep_reference.item("image", data, 0.5)
    ids = _merged_prompt(deep_reference, ids, item)
    positions, _ = deep_reference.positions(ids, [item])
    schedule = AimSchedule(0.5, (3, 6))
    logits, _, kept = deep_reference.prefill(ids, [item], positions, schedule)
    visual = item.rows.shape[0]
    text = len(ids) - visual
    assert [len(k) for k in kept] == [text + v for v in schedule.visual_kept(visual, 6)]
    assert (logits - deep_reference.logits(ids, [item], positions)[-1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="DeepStack"):
        deep_reference.prefill(ids, [item], positions, AimSchedule(0.5, (2, 6)))


def _merged_prompt(reference: Qwen3VLReference, ids: list[int], item) -> list[int]:
    """`ids` with each placeholder run cut to the item's merged tokens per slice."""
    media = set(reference.visual_token_ids)
    out, run = [], 0
    for token in ids:
        run = run + 1 if token in media else 0
        if run <= item.merged_per_slice:
            out.append(token)
    return out
