"""Reference of one Qwen3-VL request with AIM merging, independent of vLLM (transformers + pure torch).

transformers' vision tower gives each item's unmerged features: the main features [t * n, D] and
one DeepStack feature [t * n, D] per level, temporal slices in order, each slice in raster order
of the merged (h/2, w/2) grid. Every slice merges on its own (`core.merge.merge_frames_with_origin`
to `merged_token_count(n, r)` tokens) with the plan of its main features, applied alike to the main
and the DeepStack rows; with an encoder keep < 1 the tower's blocks from `merge_start_layer` on
run on tokens merged per temporal slice (`reference.encoder_merging.qwen3_merged_features`). M-RoPE
positions are written out here from the item grids:
- every placeholder run is one slice (an image; one frame pair of a video, its `<t seconds>` and
  vision start/end tokens being text); text runs on all three axes from the previous run's
  largest position + 1 (the unmerged grid's), and a slice at `start` has (start, start + row,
  start + column) (Qwen3-VL: time is in the timestamp text, not in the temporal axis);
- a merged token takes the position of its survivor (`Qwen3Item.origin`, this project's rule);
  without an origin the count-based positions at `core.merge.spread_indices`.
The LLM is transformers' own `Qwen3VLTextModel` (q/k norms, interleaved M-RoPE, DeepStack added to
the visual rows after its first L layers):
- without pruning, its own forward on the whole sequence at every step (no cache);
- with pruning (AIM §3.2), `prefill` / `decode`: its layers' modules written out as a loop with
  removal, as `reference.decoder.ReferenceDecoder` does for Qwen2/LLaMA: after layer l's
  attention the pruned visual rows are dropped (PageRank over that layer's rotated, q/k-normed
  queries and keys), later layers run on the kept rows at their original positions, and layer l's
  cache holds the rows layer l processed. DeepStack level i is added to the visual rows present
  after layer i; the schedule may not prune before layer L (`models/qwen3_vl.py`), so every row
  that needs a DeepStack row is still there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aim_vllm.core.baselines import reduce_frames_with_origin
from aim_vllm.core.importance import importance, select_kept_tokens
from aim_vllm.core.merge import merge_frames_with_origin, spread_indices
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.core.token_counts import merged_token_count
from aim_vllm.reference.decoder import KVCache
from aim_vllm.reference.encoder_merging import qwen3_merged_features
from aim_vllm.reference.pipeline import ReferenceRun
from aim_vllm.reference.qwen2_5_vl import _placeholder_runs


@dataclass
class Qwen3Item:
    """One image or video as the LLM sees it after merging."""

    rows: torch.Tensor  # [t * k, D * (1 + L)]: main features, then each DeepStack level
    grid_thw: tuple[int, int, int]  # patch grid before the patch merger
    merged_per_slice: int  # k
    origin: torch.Tensor | None = None  # [t, k] raster index of each token's survivor in its slice


def slice_positions(rows: int, columns: int, keep: list[int], start: int) -> tuple[torch.Tensor, int]:
    """Positions [3, len(keep)] of one slice's kept raster indices at `start`, and the next text
    position."""
    grid = torch.stack(
        torch.meshgrid(
            torch.zeros(1, dtype=torch.long), torch.arange(rows), torch.arange(columns), indexing="ij"
        )
    )
    full = grid.reshape(3, -1) + start  # (3, rows * columns)
    return full[:, keep], int(full.max()) + 1


def mrope_positions(
    prompt_ids: list[int], items: list[Qwen3Item], visual_ids: tuple[int, ...], merge_size: int
) -> tuple[torch.Tensor, int]:
    """Positions [3, N] of a placeholder-expanded prompt, and the decode offset (max + 1 - N)."""
    slices = []  # (rows, columns, kept raster indices) of every slice, in prompt order
    for item in items:
        t, h, w = item.grid_thw
        rows, cols = h // merge_size, w // merge_size
        for s in range(t):
            keep = (
                spread_indices(rows * cols, item.merged_per_slice) if item.origin is None else item.origin[s]
            )
            slices.append((rows, cols, [int(i) for i in keep]))
    runs = _placeholder_runs(prompt_ids, visual_ids)
    if len(runs) != len(slices):
        raise ValueError(f"prompt has {len(runs)} placeholder runs for {len(slices)} slices")
    columns, cursor, next_pos = [], 0, 0
    for (begin, end), (rows, cols, keep) in zip(runs, slices, strict=True):
        columns.append(torch.arange(begin - cursor).expand(3, -1) + next_pos)  # text before
        positions, next_pos = slice_positions(rows, cols, keep, next_pos + begin - cursor)
        if positions.shape[1] != end - begin:
            raise ValueError(f"placeholder run of {end - begin} tokens for a slice of {positions.shape[1]}")
        columns.append(positions)
        cursor = end
    columns.append(torch.arange(len(prompt_ids) - cursor).expand(3, -1) + next_pos)  # text after
    positions = torch.cat(columns, dim=1)
    return positions, int(positions.max()) + 1 - len(prompt_ids)


class Qwen3VLReference:
    """A Qwen3-VL checkpoint loaded for reference computations (float32, CPU)."""

    hf_class = "Qwen3VLForConditionalGeneration"  # transformers' model class (MoE: `qwen3_vl_moe.py`)

    def __init__(self, model_dir: str | Path) -> None:
        import transformers

        model_cls = getattr(transformers, self.hf_class)
        self.hf = model_cls.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(model_dir)
        config = self.hf.config
        self.visual_token_ids = (config.image_token_id, config.video_token_id)
        self.merge_size = config.vision_config.spatial_merge_size
        self.width = config.vision_config.out_hidden_size  # D

    @torch.no_grad()
    def features(
        self, kind: str, data: Any, encoder_keep: float = 1.0
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Unmerged rows [t * n, D * (1 + L)] of a PIL image or frames [F, H, W, 3], and the grid;
        with `encoder_keep` < 1 the ViT merges per temporal slice (`reference.encoder_merging`)."""
        if kind == "image":
            out = self.processor.image_processor(images=[data], return_tensors="pt")
            pixels, grid = out["pixel_values"], out["image_grid_thw"]
        else:
            out = self.processor.video_processor(videos=[data], return_tensors="pt", do_sample_frames=False)
            pixels, grid = out["pixel_values_videos"], out["video_grid_thw"]
        if encoder_keep < 1.0:
            main, levels = qwen3_merged_features(self.hf.model.visual, pixels, grid, encoder_keep)
        else:
            tower = self.hf.model.visual(pixels, grid_thw=grid, return_dict=True)
            main, levels = tower.pooler_output, tower.deepstack_features
        return torch.cat([main, *levels], dim=1), tuple(grid[0].tolist())

    def item(
        self, kind: str, data: Any, ratio: float, method: str = "aim", encoder_keep: float = 1.0
    ) -> Qwen3Item:
        """The item merged per temporal slice at `ratio`, the plan from its main features (the ViT
        merged at `encoder_keep`); `method` "pool" / "random": the baselines of `core.baselines`
        on whole rows (main and DeepStack channels reduced alike)."""
        rows, grid = self.features(kind, data, encoder_keep)
        slices = grid[0]
        per_slice = rows.shape[0] // slices
        merged = merged_token_count(per_slice, ratio)
        frames = rows.view(slices, per_slice, -1)  # (t, n, C)
        if method == "aim":
            rows, origin = merge_frames_with_origin(frames, merged, metric=frames[..., : self.width])
        else:
            rows, origin = reduce_frames_with_origin(frames, merged, method)
        return Qwen3Item(rows.flatten(0, 1), grid, merged, origin)  # (t * k, C)

    def positions(self, prompt_ids: list[int], items: list[Qwen3Item]) -> tuple[torch.Tensor, int]:
        return mrope_positions(prompt_ids, items, self.visual_token_ids, self.merge_size)

    def prompt(
        self, ids: list[int], items: list[Qwen3Item]
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Input embeddings [N, d] of `ids` (placeholders filled by `items` in order), each
        DeepStack level's [V, D] rows, and the visual rows' mask [N]."""
        tokens = torch.tensor(ids)
        is_visual = torch.isin(tokens, torch.tensor(self.visual_token_ids))
        embeds = self.hf.model.language_model.embed_tokens(tokens).clone()
        levels: list[torch.Tensor] = []
        if items:
            rows = torch.cat([item.rows for item in items])
            if rows.shape[0] != int(is_visual.sum()):
                raise ValueError(
                    f"prompt has {int(is_visual.sum())} placeholders for {rows.shape[0]} item tokens"
                )
            embeds[is_visual] = rows[:, : self.width]
            levels = list(rows[:, self.width :].split(self.width, dim=1))  # L x (V, D)
        return embeds, levels, is_visual

    @torch.no_grad()
    def logits(self, ids: list[int], items: list[Qwen3Item], positions: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of `ids` (placeholders filled by `items` in order) at `positions` [3, N]."""
        embeds, levels, is_visual = self.prompt(ids, items)
        hidden = self.hf.model.language_model(
            inputs_embeds=embeds[None],
            position_ids=positions[:, None, :],
            visual_pos_masks=is_visual[None],
            deepstack_visual_embeds=levels or None,
            use_cache=False,
        ).last_hidden_state
        return self.hf.lm_head(hidden[0])

    # -- removal formulation (pruning) -------------------------------------------------------
    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [n, D] of M-RoPE positions [3, n] (the model's interleaved sections)."""
        cos, sin = self.hf.model.language_model.rotary_emb(x[None], positions[:, None, :])
        return cos[0], sin[0]

    def _qkv(self, layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated q [n, H, D], k and v [n, Hkv, D] of a `Qwen3VLTextDecoderLayer` (q/k norms)."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        attn = layer.self_attn
        h = layer.input_layernorm(x)
        shape = (x.shape[0], -1, attn.head_dim)
        q, k = attn.q_norm(attn.q_proj(h).view(shape)), attn.k_norm(attn.k_proj(h).view(shape))
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        return q, k, attn.v_proj(h).view(shape)

    @staticmethod
    def _attend(layer, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q [nq, H, D] over k/v [nk, Hkv, D] under a boolean mask [nq, nk]."""
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * layer.self_attn.scaling
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v).flatten(1)

    @staticmethod
    def _finish(layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """o_proj + residual + MLP + residual."""
        h = x + layer.self_attn.o_proj(attn)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    @torch.no_grad()
    def prefill(
        self, ids: list[int], items: list[Qwen3Item], positions: torch.Tensor, schedule: AimSchedule
    ) -> tuple[torch.Tensor, KVCache, list[torch.Tensor]]:
        """Removal prefill: logits [vocab] at the last prompt token, each layer's cache, and per
        layer the original indices of the rows leaving it."""
        llm = self.hf.model.language_model
        embeds, levels, is_visual = self.prompt(ids, items)
        deepstack = [embeds.new_zeros(embeds.shape).index_put_((is_visual,), rows) for rows in levels]
        targets = schedule.visual_kept(int(is_visual.sum()), len(llm.layers))
        idx = torch.arange(len(ids))  # original index of each present row
        x, cache, kept = embeds, KVCache(), []
        for layer_idx, layer in enumerate(llm.layers):
            q, k, v = self._qkv(layer, x, *self._rope(x, positions[:, idx]))
            cache.keys.append(k)
            cache.values.append(v)
            attn = self._attend(layer, q, k, v, torch.ones(len(idx), len(idx), dtype=torch.bool).tril())
            visual_now = is_visual[idx]
            if targets[layer_idx] < int(visual_now.sum()):  # 1. rank, 2. keep, 3. drop rows now
                if layer_idx < len(levels):
                    raise ValueError(f"pruning after layer {layer_idx}, before the last DeepStack level")
                scores = importance(schedule.prune_method, q, k, visual_now)
                keep = select_kept_tokens(scores, visual_now, targets[layer_idx])
                x, attn, idx = x[keep], attn[keep], idx[keep]
            x = self._finish(layer, x, attn)
            if layer_idx < len(deepstack):  # DeepStack: level i after layer i
                x = x + deepstack[layer_idx][idx]
            kept.append(idx)
        return self.hf.lm_head(llm.norm(x[-1:]))[0], cache, kept

    @torch.no_grad()
    def decode(self, cache: KVCache, token: int, position: int) -> torch.Tensor:
        """One decode step of text `token` at `position` (all three axes); appends to `cache`."""
        llm = self.hf.model.language_model
        x = llm.embed_tokens(torch.tensor([token]))
        cos, sin = self._rope(x, torch.full((3, 1), position))
        for layer_idx, layer in enumerate(llm.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            cache.keys[layer_idx] = torch.cat([cache.keys[layer_idx], k])
            cache.values[layer_idx] = torch.cat([cache.values[layer_idx], v])
            everything = torch.ones(1, cache.keys[layer_idx].shape[0], dtype=torch.bool)
            x = self._finish(
                layer, x, self._attend(layer, q, cache.keys[layer_idx], cache.values[layer_idx], everything)
            )
        return self.hf.lm_head(llm.norm(x))[0]

    def run(
        self, prompt_ids: list[int], items: list[Qwen3Item], schedule: AimSchedule, tokens: list[int]
    ) -> ReferenceRun:
        """Prefill + teacher-forced decode of `tokens` (e.g. what vLLM generated): transformers'
        forward without pruning, the removal loop with it."""
        positions, offset = self.positions(prompt_ids, items)
        n = len(prompt_ids)
        run = ReferenceRun([], [], [], n)
        ids = list(prompt_ids)
        cache = None
        if schedule.prunes:
            logits, cache, _ = self.prefill(prompt_ids, items, positions, schedule)
        for step, token in enumerate(tokens):
            if cache is None:
                logits = self.logits(ids, items, positions)[-1]
            logprobs = logits.log_softmax(-1)
            top = logprobs.topk(2)
            run.logprobs.append(float(logprobs[token]))
            run.argmax.append(int(top.indices[0]))
            run.margins.append(float(top.values[0] - top.values[1]))
            ids.append(token)
            positions = torch.cat([positions, torch.full((3, 1), n + step + offset)], dim=1)
            if cache is not None and step + 1 < len(tokens):
                logits = self.decode(cache, token, n + step + offset)
        return run
