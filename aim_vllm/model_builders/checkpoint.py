"""Writing a built checkpoint directory: processor, generation config, config, seeded weights.

Shared by the architecture builders. Weights are written only for the `tiny` size (random
initialisation under a fixed seed); published sizes are config-only, for `--load-format dummy`.
transformers 5 names modules differently from the published checkpoints vLLM 0.32's loaders
map, so builders may rename the state dict (`rename_state_dict`) before it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Prefixes = Sequence[tuple[str, str]]


def rename_state_dict(state_dict: dict[str, Any], prefixes: Prefixes) -> dict[str, Any]:
    """Rename each tensor by the first matching (old prefix, new prefix); tensors made contiguous."""
    renamed = {}
    for name, tensor in state_dict.items():
        old, new = next(((o, n) for o, n in prefixes if name.startswith(o)), ("", ""))
        renamed[new + name[len(old) :]] = tensor.contiguous()
    return renamed


def write_checkpoint(
    out_dir: Path,
    *,
    processor: Any,
    config: Any,
    eos_token_id: int,
    model_cls: Any,
    size: str,
    seed: int,
    prefixes: Prefixes = (),
) -> Path:
    """Save processor, generation config and config; for `tiny`, seeded random fp32 weights too."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    GenerationConfig(
        eos_token_id=eos_token_id, pad_token_id=processor.tokenizer.pad_token_id
    ).save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    if size != "tiny":
        return out_dir
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    weights = rename_state_dict(model.state_dict(), prefixes)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir
