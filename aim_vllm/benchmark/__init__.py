"""`aim-vllm bench`: AIM levels against AIM off (and the plugin against plain vLLM) in one run.

- `workload`: media kinds, AIM levels, request bodies and the interleaved order of phases.
- `client`: streaming chat requests (TTFT, TPOT, end-to-end latency) and phases at a concurrency.
- `stats`: per-cell summaries, ratios to the reference from the same run, the Amdahl bound.
- `report`: JSON, Markdown tables and the PNG plot.
- `processes`: the engine(s) and the gateway as child processes.
- `runner`: the measurement itself, with a progress bar.

No vLLM import anywhere here: engines run as separate processes.
"""
