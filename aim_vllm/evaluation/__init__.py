"""`aim-vllm eval`: accuracy vs FLOPs of AIM levels and baselines on a JSONL data set, in one run."""
