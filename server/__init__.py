"""The aim-vllm gateway: an OpenAI-compatible front for vLLM replicas running the AIM plugin."""
