"""Bench only: `sitecustomize.py` here switches stock EVS on in vLLM 0.32's CPU runner (see it)."""
