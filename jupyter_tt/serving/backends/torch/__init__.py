"""The torch reference backend: ``model.py`` is the Llama model (its sizes, ``ModelArgs``, are ``serving/llama.py``'s), ``runner.py`` runs it."""

from __future__ import annotations


def make_runner(checkpoint, *, weights: str, kv_cache_bytes: int, max_num_seqs: int, implementation: str):
    import torch

    from .runner import TorchModelRunner

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchModelRunner(checkpoint, weights=weights, kv_cache_bytes=kv_cache_bytes, device=device)
