"""aim-vllm: AIM token merging and in-LLM pruning as a vLLM plugin.

`register` is the `vllm.general_plugins` entry point; vLLM calls it in every process.
Importing this package is cheap: no torch or vLLM import happens here.
"""


def register() -> None:
    """vLLM general-plugin entry point (idempotent)."""
    from aim_vllm.plugin import register_all

    register_all()
