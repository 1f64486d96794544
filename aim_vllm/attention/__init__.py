"""Attention-backend glue: per-layer metadata for sequences whose pruned visual rows are removed."""
