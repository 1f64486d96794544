"""Test-only start-up hook for vLLM processes (put this folder on PYTHONPATH; Python imports
`sitecustomize` in every interpreter, so the engine core and workers get it too).

- AIM_TEST_VLLM_VERSION=X: vLLM reports version X (a vLLM the plugin does not support).
- AIM_TEST_UNLISTED_BACKEND=1: CPU_ATTN resolves to a subclass named CUSTOM, a backend the
  plugin has no compaction support for (same kernels, so answers stay checkable).
Does nothing when neither is set.
"""

import os

if os.environ.get("AIM_TEST_VLLM_VERSION"):
    import vllm
    import vllm.version

    vllm.__version__ = vllm.version.__version__ = os.environ["AIM_TEST_VLLM_VERSION"]

if os.environ.get("AIM_TEST_UNLISTED_BACKEND") == "1":
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, "sitecustomize.UnlistedCPUAttentionBackend")


def __getattr__(name: str):
    """The unlisted backend class, created on first use (vLLM resolves it by its path)."""
    if name != "UnlistedCPUAttentionBackend":
        raise AttributeError(name)
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    class UnlistedCPUAttentionBackend(CPUAttentionBackend):
        @staticmethod
        def get_name() -> str:
            return "CUSTOM"

    globals()[name] = UnlistedCPUAttentionBackend
    return UnlistedCPUAttentionBackend
