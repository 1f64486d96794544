"""End-to-end references of one request with AIM, independent of vLLM.

transformers computes each item's unmerged visual features; `core` merges them;
`reference.decoder.ReferenceDecoder` runs the LLM with pruning by removal. Engine tests compare
vLLM's tokens and logprobs with this. `ReferencePipeline` is the part every architecture
shares (prompt embeddings, positions, prefill, teacher-forced decode); `ReferenceModel` is
LLaVA-OneVision, `reference.qwen2_5_vl` and `reference.llava` the other architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aim_vllm.core.packing import merge_anyres_image_embedding, merge_video_embedding
from aim_vllm.core.schedule import AimSchedule
from aim_vllm.reference.decoder import ReferenceDecoder, load_llm_weights
from aim_vllm.reference.encoder_merging import merged_tower


@dataclass
class ReferenceRun:
    """Teacher-forced logprobs of given tokens, and what the reference itself would pick."""

    logprobs: list[float]  # logprob of each given token at its step
    argmax: list[int]  # the reference's greedy choice at each step
    margins: list[float]  # top-1 minus top-2 logprob at each step (ties make argmax fragile)
    num_prompt_tokens: int


class ReferencePipeline:
    """The LLM side of a reference: subclasses load a checkpoint and say what an item is.

    Subclasses set `decoder`, `embed_tokens` and `visual_token_ids`, implement `item`, and
    override `item_embedding` / `positions` when an item is more than its embedding or positions
    are not 0..N-1 (M-RoPE).
    """

    decoder: ReferenceDecoder
    embed_tokens: torch.Tensor
    visual_token_ids: tuple[int, ...]

    def item(self, kind: str, data: Any, ratio: float) -> Any:
        """One media item (`kind` "image" | "video") merged at `ratio`, as `run` takes it."""
        raise NotImplementedError

    def item_embedding(self, item: Any) -> torch.Tensor:
        """The [tokens, C] rows an item fills its placeholders with."""
        return item

    def positions(self, prompt_ids: list[int], items: list[Any]) -> tuple[torch.Tensor, int]:
        """Position ids of the prompt ([N], or [3, N] for M-RoPE) and the decode offset.

        A token generated at index i (i >= N) has position i + offset on every axis.
        """
        return torch.arange(len(prompt_ids)), 0

    def prompt_embeddings(self, prompt_ids: list[int], items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings of a placeholder-expanded prompt, items filling its placeholder runs in order."""
        ids = torch.tensor(prompt_ids)
        is_visual = torch.isin(ids, torch.tensor(self.visual_token_ids))
        rows = [self.item_embedding(item) for item in items]
        expected = sum(row.shape[0] for row in rows)
        if int(is_visual.sum()) != expected:
            raise ValueError(f"prompt has {int(is_visual.sum())} placeholders for {expected} item tokens")
        embeds = self.embed_tokens[ids].clone()
        if rows:
            embeds[is_visual] = torch.cat(rows).to(embeds.dtype)
        return embeds, is_visual

    @torch.no_grad()
    def run(
        self, prompt_ids: list[int], items: list[Any], schedule: AimSchedule, tokens: list[int]
    ) -> ReferenceRun:
        """Prefill + teacher-forced decode of `tokens` (e.g. what vLLM generated)."""
        embeds, is_visual = self.prompt_embeddings(prompt_ids, items)
        positions, offset = self.positions(prompt_ids, items)
        n = len(prompt_ids)
        result = self.decoder.prefill(
            embeds,
            positions,
            is_visual,
            schedule.prune_layers,
            prune_keep=schedule.prune_keep,
            prune_method=schedule.prune_method,
        )
        logits = result.last_logits
        run = ReferenceRun([], [], [], n)
        for step, token in enumerate(tokens):
            logprobs = logits.log_softmax(-1)
            top = logprobs.topk(2)
            run.logprobs.append(float(logprobs[token]))
            run.argmax.append(int(top.indices[0]))
            run.margins.append(float(top.values[0] - top.values[1]))
            if step + 1 < len(tokens):
                position = torch.full_like(positions[..., 0], n + step + offset)
                logits = self.decoder.decode(result.cache, self.embed_tokens[token], position)
        return run

    @torch.no_grad()
    def prompt_logprobs(self, prompt_ids: list[int], items: list[Any]) -> list[float | None]:
        """Logprob of each prompt token given the tokens before it (AIM merge only; no pruning)."""
        embeds, is_visual = self.prompt_embeddings(prompt_ids, items)
        logits = self.decoder.prefill(embeds, self.positions(prompt_ids, items)[0], is_visual).logits
        logprobs = logits.log_softmax(-1)
        return [None] + [float(logprobs[i - 1, token]) for i, token in enumerate(prompt_ids) if i > 0]


class ReferenceModel(ReferencePipeline):
    """A LLaVA-OneVision checkpoint loaded for reference computations (float32, CPU)."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        self.hf = LlavaOnevisionForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        weights, config = load_llm_weights(model_dir)
        self.decoder = ReferenceDecoder(weights, config)
        self.embed_tokens = weights["embed_tokens.weight"]
        self.base_tokens = (
            self.hf.config.vision_config.image_size // self.hf.config.vision_config.patch_size
        ) ** 2
        self.visual_token_ids = (self.hf.config.image_token_index, self.hf.config.video_token_index)

    def item(
        self, kind: str, data: Any, ratio: float, method: str = "aim", encoder_keep: float = 1.0
    ) -> torch.Tensor:
        """The merged packed embedding of a PIL image or of video frames [F, H, W, 3]."""
        if kind == "image":
            return self.merge(self.image_embedding(data, encoder_keep), "image", 0, ratio, method)
        return self.merge(self.video_embedding(data, encoder_keep), "video", len(data), ratio, method)

    @torch.no_grad()
    def image_embedding(self, image, encoder_keep: float = 1.0) -> torch.Tensor:
        """Packed anyres embedding [base + rows * (W + 1), C] of a PIL image."""
        out = self.processor.image_processor(images=[image], return_tensors="pt")
        with merged_tower(self.hf.model, encoder_keep):
            feats = self.hf.model.get_image_features(
                pixel_values=out["pixel_values"],
                image_sizes=out["image_sizes"],
                batch_num_images=torch.tensor([1]),
            ).pooler_output
        return feats[0]

    @torch.no_grad()
    def video_embedding(self, frames: np.ndarray, encoder_keep: float = 1.0) -> torch.Tensor:
        """Packed video embedding [F * 196 + 1, C] of frames [F, H, W, 3] uint8."""
        out = self.processor.video_processor(videos=[frames], return_tensors="pt")
        with merged_tower(self.hf.model, encoder_keep):
            features = self.hf.model.get_video_features(pixel_values_videos=out["pixel_values_videos"])
        return features.pooler_output[0]

    def merge(
        self, embedding: torch.Tensor, kind: str, num_frames: int, ratio: float, method: str = "aim"
    ) -> torch.Tensor:
        """AIM merge of one packed item (newline rows found by value: they copy `image_newline`)."""
        if ratio >= 1.0:
            return embedding
        if kind == "video":
            return merge_video_embedding(embedding, num_frames, ratio, method)
        newline = self.hf.model.image_newline
        rows = int((embedding[self.base_tokens :] == newline).all(-1).sum())
        return merge_anyres_image_embedding(embedding, self.base_tokens, rows, ratio, method)
