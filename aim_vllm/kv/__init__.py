"""KV memory freed for pruned tokens (Design C): per-layer KV-cache groups that hold what each layer kept."""
