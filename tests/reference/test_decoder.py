"""The pure-torch reference: removal == masking on every kept token; AIM off == transformers."""

from __future__ import annotations

import pytest
import torch

from aim_vllm.reference.decoder import ReferenceDecoder, load_llm_weights


@pytest.fixture(scope="module")
def decoder(tiny_model_dir) -> ReferenceDecoder:
    weights, config = load_llm_weights(tiny_model_dir)
    return ReferenceDecoder(weights, config)


def _prompt(n_text_before: int = 5, n_visual: int = 40, n_text_after: int = 7, dim: int = 128, seed: int = 0):
    """Random input embeddings with a visual span between two text spans."""
    n = n_text_before + n_visual + n_text_after
    embeds = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.5
    is_visual = torch.zeros(n, dtype=torch.bool)
    is_visual[n_text_before : n_text_before + n_visual] = True
    return embeds, torch.arange(n), is_visual


@pytest.mark.parametrize("prune_layers", [None, (1, 4), (2, 3), (0, 6), (3, 6)])
def test_removal_equals_masking_on_kept_tokens(decoder: ReferenceDecoder, prune_layers) -> None:
    """Dropping pruned rows == masking them as queries and keys, on every kept token, fp32 1e-5."""
    embeds, positions, is_visual = _prompt()
    removed = decoder.prefill(embeds, positions, is_visual, prune_layers)
    hidden, masks = decoder.forward_masked(embeds, positions, is_visual, prune_layers)
    for layer, mask in enumerate(masks):
        assert mask.nonzero().squeeze(-1).tolist() == removed.kept[layer].tolist()
    final = masks[-1].nonzero().squeeze(-1)
    torch.testing.assert_close(removed.logits, decoder.logits(hidden[final]), rtol=1e-5, atol=1e-5)


def test_pruning_really_removes_rows(decoder: ReferenceDecoder) -> None:
    """Rows per layer = text + kept visual of the previous layer (the engine's counters must match)."""
    embeds, positions, is_visual = _prompt()
    result = decoder.prefill(embeds, positions, is_visual, (1, 4))
    # 40 visual: kept after layers 0..5 = 40, 26, 13, 0, 0, 0; layer l processes the count after l-1
    assert result.rows_per_layer == [52, 52, 38, 25, 12, 12]
    assert [k.shape[0] for k in result.cache.keys] == result.rows_per_layer
    assert not torch.equal(result.last_logits, decoder.prefill(embeds, positions, is_visual).last_logits)


def test_decode_attends_to_kept_prompt_tokens(decoder: ReferenceDecoder) -> None:
    """A decode step equals re-running the whole sequence with the same per-layer keep sets."""
    embeds, positions, is_visual = _prompt()
    result = decoder.prefill(embeds, positions, is_visual, (1, 4))
    token = torch.randn(128, generator=torch.Generator().manual_seed(1))
    step = decoder.decode(result.cache, token, torch.tensor(len(positions)))
    # masking formulation with the new token appended as text and pruning decided on the prompt only
    full = torch.cat([embeds, token[None]])
    hidden, _ = decoder.forward_masked(
        full,
        torch.arange(len(full)),
        torch.cat([is_visual, torch.tensor([False])]),
        (1, 4),
        keep_sets=result.kept,
    )
    torch.testing.assert_close(step, decoder.logits(hidden[-1]), rtol=1e-5, atol=1e-5)


def test_aim_off_equals_transformers(tiny_model_dir, decoder: ReferenceDecoder) -> None:
    """The reference with AIM off reproduces the HF Qwen2 language model's logits at every position."""
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    embeds, positions, is_visual = _prompt()
    with torch.no_grad():
        hidden = model.model.language_model(
            inputs_embeds=embeds[None], position_ids=positions[None]
        ).last_hidden_state
        expected = model.lm_head(hidden)[0]
    got = decoder.prefill(embeds, positions, is_visual).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("method", "keep"), [("fastv", 0.3), ("pagerank", 0.5), ("fastv", None)])
def test_baseline_pruning_removal_equals_masking(decoder: ReferenceDecoder, method, keep) -> None:
    """The FastV-style baseline (and single-layer PageRank) obey the same removal == masking rule."""
    embeds, positions, is_visual = _prompt()
    kwargs = {"prune_method": method, "prune_keep": keep}
    removed = decoder.prefill(embeds, positions, is_visual, (2, 4), **kwargs)
    hidden, masks = decoder.forward_masked(embeds, positions, is_visual, (2, 4), **kwargs)
    for layer, mask in enumerate(masks):
        assert mask.nonzero().squeeze(-1).tolist() == removed.kept[layer].tolist()
    final = masks[-1].nonzero().squeeze(-1)
    torch.testing.assert_close(removed.logits, decoder.logits(hidden[final]), rtol=1e-5, atol=1e-5)
    if keep is not None:
        assert removed.rows_per_layer[3:] == [12 + int(40 * keep)] * 3
