"""Bench only: stock EVS / VidCom2 on vLLM 0.32's CPU runner, switched on as its GPU runner would.

`GPUModelRunner.load_model` sets `is_multimodal_pruning_enabled` once the model is loaded;
`CPUModelRunner.load_model` (its override) never does, so with `--video-pruning-rate` the pruned
video embeddings reach the prompt merge with their 4 extra M-RoPE channels and the engine
crashes. `aim-vllm bench --evs` puts this directory on the PYTHONPATH of the stock engine only:
every Python process of that engine imports this file at start-up (`site`), and when vLLM imports
its CPU runner the class gets the GPU runner's assignment after `load_model`.

Qwen3-VL (any runner, with transformers >= 5.10): `Qwen3VLMultiModalProcessor.
_expands_only_video_token` is true, so a video's frames (`<t seconds><|vision_start|>...
<|vision_end|>` each) land inside the prompt's own `<|vision_start|><|video_pad|><|vision_end|>`;
`video_prune/evs.py:recompute_mrope_positions` (EVS and VidCom2 both) takes that outer
`<|vision_start|>` for the first frame's, writes the positions at a negative offset and the engine
crashes on the first video. The stock engine therefore expands the whole marker triple, the prompt
layout of Qwen3-VL's release processor (transformers < 5.10) that this code was written for: two
marker tokens fewer per video than the AIM engine's prompt. Nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "vllm.v1.worker.cpu_model_runner"
QWEN3_VL = "vllm.model_executor.models.qwen3_vl"


def enable_pruning_as_gpu_runner(runner) -> None:
    """What `GPUModelRunner.load_model` @ vllm==0.32.0 sets once the model is loaded."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    mm_config = runner.model_config.multimodal_config
    runner.is_multimodal_pruning_enabled = (
        supports_multimodal_pruning(runner.get_model())
        and mm_config is not None
        and mm_config.is_multimodal_pruning_enabled()
    )


def _patch(module) -> None:
    load_model = module.CPUModelRunner.load_model

    def load_model_with_evs(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        enable_pruning_as_gpu_runner(self)

    module.CPUModelRunner.load_model = load_model_with_evs


def _expand_whole_video_placeholder(module) -> None:
    """Qwen3-VL: replace `<|vision_start|><|video_pad|><|vision_end|>` by the frames (the target
    `Qwen3VLMultiModalProcessor` uses for processors older than transformers 5.10)."""
    module.Qwen3VLMultiModalProcessor._expands_only_video_token = staticmethod(lambda hf_processor: False)


_PATCHES = {TARGET: _patch, QWEN3_VL: _expand_whole_video_placeholder}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchOnImport())
