"""Every benchmark of the project, in one package (installed with it: `aim-vllm bench` runs it).

`aim-vllm bench`: AIM levels against AIM off (and the plugin against plain vLLM) in one run.
- `command`: its flags (the `aim-vllm bench` subcommand).
- `workload`: media kinds, AIM levels, request bodies and the interleaved order of phases.
- `client`: streaming chat requests (TTFT, TPOT, end-to-end latency) and phases at a concurrency.
- `stats`: per-cell summaries, ratios to the reference from the same run, the Amdahl bound.
- `report`: JSON, Markdown tables and the PNG plot.
- `processes`: the engine(s) and the gateway as child processes.
- `runner`: the measurement itself, with a progress bar.
Measurements of one part, each runnable as `.venv/bin/python bench/<name>.py` (see README.md
here): `gateway_overhead`, `merge_overhead`, `pagerank_cost`, `gpu_prefill`, `flops_table`,
`keyonly_deviation`, `vllm_bench_serve`, and `locustfile` (for locust; stdlib + locust only).

No vLLM import anywhere here: engines run as separate processes.
"""
