"""Published model shapes for FLOPs tables (`aim-vllm flops --arch ...`); plain data.

LLM dimensions are those of the public HF configs. Visual layouts state their assumption:
LLaVA-OneVision video frames are 384x384 -> 27x27 SigLIP patches -> 2x2 pooled to 14x14 = 196
tokens, one newline token per video (vLLM `get_num_video_tokens`); a LLaVA-OneVision image at
384x384 is the base view (729) + one anyres crop (27x27, unpadded) + 27 row newlines;
LLaVA-1.5 images are 576 CLIP-336 tokens; Qwen2.5-VL frames/images at 448x448 give 256 tokens
per temporal slice of 2 frames (PatchMerger 2x2); Qwen3-VL frames/images at 512x512 give 256
tokens per slice (patch 16, merger 2x2), a video's `<t seconds>` text between slices not counted.
Qwen3-VL-4B's attention (32 heads x 128 = 4096) is wider than its 2560 hidden size
(`core.flops`: the query width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aim_vllm.core.budget import VisualLayout
from aim_vllm.core.flops import LLMShape

_QWEN2_7B = LLMShape(
    hidden_size=3584, num_layers=28, intermediate_size=18944, num_heads=28, num_kv_heads=4, head_dim=128
)
_QWEN2_0_5B = LLMShape(
    hidden_size=896, num_layers=24, intermediate_size=4864, num_heads=14, num_kv_heads=2, head_dim=64
)
_QWEN2_5_3B = LLMShape(  # Qwen2.5-VL-3B's LLM
    hidden_size=2048, num_layers=36, intermediate_size=11008, num_heads=16, num_kv_heads=2, head_dim=128
)
_LLAMA_7B = LLMShape(
    hidden_size=4096, num_layers=32, intermediate_size=11008, num_heads=32, num_kv_heads=32, head_dim=128
)


_QWEN3_2B = LLMShape(  # Qwen3-VL-2B's LLM
    hidden_size=2048, num_layers=28, intermediate_size=6144, num_heads=16, num_kv_heads=8, head_dim=128
)
_QWEN3_4B = LLMShape(  # Qwen3-VL-4B's LLM
    hidden_size=2560, num_layers=36, intermediate_size=9728, num_heads=32, num_kv_heads=8, head_dim=128
)
_QWEN3_8B = LLMShape(  # Qwen3-VL-8B's LLM
    hidden_size=4096, num_layers=36, intermediate_size=12288, num_heads=32, num_kv_heads=8, head_dim=128
)
_QWEN3_30B_A3B = LLMShape(  # Qwen3-VL-30B-A3B's LLM: the MLP a token passes is 8 experts x 768
    hidden_size=2048, num_layers=48, intermediate_size=8 * 768, num_heads=32, num_kv_heads=4, head_dim=128
)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture's LLM shape and how its images and videos turn into visual tokens."""

    name: str
    llm: LLMShape
    frame_tokens: int  # tokens per merge group of a video (a frame, or a temporal slice)
    frames_per_group: int  # video frames per merge group (Qwen2.5-VL: temporal patch of 2)
    video_extra_tokens: int  # unmerged visual tokens per video (newline)
    image_groups: tuple[int, ...]  # merge groups of one image
    image_extra_tokens: int  # unmerged visual tokens per image (newlines)

    def layout(self, frames: int = 0, images: int = 0) -> VisualLayout:
        """Visual layout of one prompt with one video of `frames` frames and `images` images."""
        groups = (self.frame_tokens,) * math.ceil(frames / self.frames_per_group)
        groups += self.image_groups * images
        extra = (self.video_extra_tokens if frames else 0) + self.image_extra_tokens * images
        return VisualLayout(frame_tokens=groups, extra_tokens=extra)


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("llava-onevision-7b", _QWEN2_7B, 196, 1, 1, (729, 729), 27),
        ArchSpec("llava-onevision-0.5b", _QWEN2_0_5B, 196, 1, 1, (729, 729), 27),
        ArchSpec("llava-1.5-7b", _LLAMA_7B, 576, 1, 0, (576,), 0),
        ArchSpec("qwen2.5-vl-3b", _QWEN2_5_3B, 256, 2, 0, (256,), 0),
        ArchSpec("qwen2.5-vl-7b", _QWEN2_7B, 256, 2, 0, (256,), 0),
        ArchSpec("qwen3-vl-2b", _QWEN3_2B, 256, 2, 0, (256,), 0),
        ArchSpec("qwen3-vl-4b", _QWEN3_4B, 256, 2, 0, (256,), 0),
        ArchSpec("qwen3-vl-8b", _QWEN3_8B, 256, 2, 0, (256,), 0),
        ArchSpec("qwen3-vl-30b-a3b", _QWEN3_30B_A3B, 256, 2, 0, (256,), 0),
    )
}
