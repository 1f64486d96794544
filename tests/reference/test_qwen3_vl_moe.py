"""The Qwen3-VL-MoE reference: its removal loop (sparse MoE block on the rows present) with nothing
pruned equals transformers' own `Qwen3VLMoeForConditionalGeneration` forward."""

from __future__ import annotations

import pytest
import torch

from aim_vllm.core.schedule import AimSchedule
from aim_vllm.reference.qwen3_vl_moe import Qwen3VLMoeReference
from tests.reference.test_qwen3_vl import _data, _hf_inputs, _merged_prompt


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Qwen3VLMoeReference:
    from aim_vllm.model_builders import default_model_dir
    from tests.engine.qwen3.checkpoints import deeper_checkpoint

    return Qwen3VLMoeReference(
        deeper_checkpoint(default_model_dir("qwen3-vl", "tiny-moe"), tmp_path_factory.mktemp("moe") / "m")
    )


@pytest.mark.parametrize("kind", ["image", "video"])
def test_removal_loop_without_pruning_is_transformers(reference, kind) -> None:
    """Prefill and a teacher-forced decode of the removal loop equal the whole-sequence forward of
    transformers' MoE model (its router and experts on [1, N, d])."""
    data = _data(kind)
    item = reference.item(kind, data, 0.5)
    ids = _merged_prompt(reference, _hf_inputs(reference, kind, data)["input_ids"][0].tolist(), item)
    positions, offset = reference.positions(ids, [item])
    logits, cache, _ = reference.prefill(ids, [item], positions, AimSchedule(0.5))
    torch.testing.assert_close(logits, reference.logits(ids, [item], positions)[-1], rtol=0, atol=1e-5)
    n = len(ids)
    logits = reference.decode(cache, 17, n + offset)
    positions = torch.cat([positions, torch.full((3, 1), n + offset)], dim=1)
    want = reference.logits([*ids, 17], [item], positions)[-1]
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)


def test_pruning_changes_the_answer(reference) -> None:
    """Rows dropped after layers 3-5 (router and experts then see fewer rows): the answer moves."""
    data = _data("image")
    item = reference.item("image", data, 0.5)
    ids = _merged_prompt(reference, _hf_inputs(reference, "image", data)["input_ids"][0].tolist(), item)
    positions, _ = reference.positions(ids, [item])
    full, _, _ = reference.prefill(ids, [item], positions, AimSchedule(0.5))
    pruned, _, kept = reference.prefill(ids, [item], positions, AimSchedule(0.5, (3, 6)))
    assert len(kept[2]) == len(ids) > len(kept[3]) > len(kept[5])
    assert (full - pruned).abs().max() > 1e-3
