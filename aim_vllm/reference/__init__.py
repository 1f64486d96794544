"""Test oracles, independent of vLLM: what the engine's answers are checked against.

- `decoder`: a pure-torch Qwen2/LLaMA decoder with AIM pruning in two formulations (removal, and
  masking pruned tokens as queries and keys), from a checkpoint's LLM weights;
- `pipeline`: transformers' vision path + `core` merging + the decoder, for one request
  (`ReferenceModel`: LLaVA-OneVision); `llava`, `qwen2_5_vl`: the other architectures.
"""
