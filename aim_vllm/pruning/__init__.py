"""In-LLM progressive pruning with real removal (AIM §3.2) inside vLLM's model forward."""
