"""The Qwen2.5-VL reference: AIM off == transformers; merged counts and M-RoPE positions by rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aim_vllm.core.merge import spread_indices
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.qwen2_5_vl import Qwen2_5_VLReference
from tests.core.test_merge_definition import merge_by_definition

PROMPT = "<|im_start|>user\n<|vision_start|>{pad}<|vision_end|>What colour is the square?<|im_end|>\n"


@pytest.fixture(scope="module")
def reference() -> Qwen2_5_VLReference:
    from aim_vllm.model_builders import default_model_dir

    return Qwen2_5_VLReference(default_model_dir("qwen2.5-vl"))


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))


def _frames(count: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((count, 384, 384, 3)) * 255).astype("uint8")


def _hf_inputs(reference: Qwen2_5_VLReference, kind: str, data) -> dict:
    """transformers' own processing of a one-item prompt (placeholders expanded, unmerged)."""
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


def _hf_rope_index(reference: Qwen2_5_VLReference, inputs) -> torch.Tensor:
    positions, _ = reference.hf.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    return positions[:, 0]


@pytest.mark.parametrize(("kind", "frames"), [("image", 0), ("video", 2)])
def test_positions_equal_transformers(reference: Qwen2_5_VLReference, kind: str, frames: int) -> None:
    """Unmerged M-RoPE positions equal transformers' `get_rope_index` (image; one-slice video)."""
    data = _image() if kind == "image" else _frames(frames)
    inputs = _hf_inputs(reference, kind, data)
    ids = inputs["input_ids"][0].tolist()
    positions, offset = reference.positions(ids, [reference.item(kind, data, 1.0)])
    expected = _hf_rope_index(reference, inputs)
    assert torch.equal(positions, expected)
    assert offset == int(expected.max()) + 1 - len(ids)


def test_text_after_a_long_video_continues_from_its_largest_position(reference: Qwen2_5_VLReference) -> None:
    """8 frames: 4 slices at temporal step 4 reach t = 12 > the 7x7 grid. The reference (like vLLM
    0.32 and the original Qwen2.5-VL code) starts the next text at 13; transformers 5.19 at start + 7.
    Everything up to the end of the video agrees."""
    data = _frames(8)
    inputs = _hf_inputs(reference, "video", data)
    ids = inputs["input_ids"][0].tolist()
    item = reference.item("video", data, 1.0)
    positions, _ = reference.positions(ids, [item])
    hf = _hf_rope_index(reference, inputs)
    end = max(i for i, t in enumerate(ids) if t == reference.visual_token_ids[1]) + 1
    assert torch.equal(positions[:, :end], hf[:, :end])
    assert int(positions[0, end]) == int(positions[:, :end].max()) + 1
    assert int(hf[0, end]) < int(positions[0, end])


@pytest.mark.parametrize("kind", ["image", "video"])
def test_aim_off_equals_transformers_forward(reference: Qwen2_5_VLReference, kind: str) -> None:
    """Vision features + M-RoPE + the pure-torch decoder == transformers' full forward (fp32, 1e-5)."""
    data = _image() if kind == "image" else _frames(2)
    inputs = _hf_inputs(reference, kind, data)
    ids = inputs["input_ids"][0].tolist()
    item = reference.item(kind, data, 1.0)
    embeds, is_visual = reference.prompt_embeddings(ids, [item])
    positions, _ = reference.positions(ids, [item])
    got = reference.decoder.prefill(embeds, positions, is_visual).logits
    with torch.no_grad():
        expected = reference.hf(**inputs).logits[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3])
def test_merged_item_counts_and_positions(reference: Qwen2_5_VLReference, ratio: float) -> None:
    """Each slice of n tokens keeps merged_token_count(n, r), each at its survivor's position (the
    paper's merging written out independently, `merge_by_definition`); text after the item keeps
    its unmerged positions."""
    data = _frames(8)
    full, merged = reference.item("video", data, 1.0), reference.item("video", data, ratio)
    t, h, w = full.grid_thw
    n = (h // 2) * (w // 2)
    k = merged_token_count(n, ratio)
    assert merged.embedding.shape[0] == t * k
    ids_full = [0] * 3 + [reference.visual_token_ids[1]] * (t * n) + [1] * 4
    ids_merged = [0] * 3 + [reference.visual_token_ids[1]] * (t * k) + [1] * 4
    p_full, off_full = reference.positions(ids_full, [full])
    p_merged, off_merged = reference.positions(ids_merged, [merged])
    frames = full.embedding.view(t, n, -1).double()
    survivors = [merge_by_definition(frames[s].tolist(), k)[1] for s in range(t)]
    assert survivors != [spread_indices(n, k)] * t  # content, not counts, decides
    keep = list(range(3)) + [3 + s * n + i for s in range(t) for i in survivors[s]]
    keep += list(range(3 + t * n, len(ids_full)))
    assert torch.equal(p_merged, p_full[:, keep])
    assert off_merged == off_full + t * (n - k)
