"""What every backend shares about a Llama-family model: its sizes (``ModelArgs``, read from the
checkpoint by ``checkpoint.py``) and its rotary position tables. The torch, OpenVINO and ttnn
backends, the engine and the checkpoint reader import these from here, not from one backend."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelArgs:
    """The sizes of a Llama-family model, read from its checkpoint; every backend builds from these."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    rope_scaling: dict | None = None  # Llama 3.1 style: factor, low/high_freq_factor, original_max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def kv_cache_blocks(self, block_size: int, budget_bytes: int, dtype: torch.dtype) -> int:
        """How many blocks of ``block_size`` tokens' keys and values in ``dtype`` fit ``budget_bytes`` (at least one)."""
        per_block = self.n_layers * 2 * block_size * self.n_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8
        return max(budget_bytes // per_block, 1)


def precompute_rope(args: ModelArgs, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [length, head_dim] (Hugging Face's rotate-half layout), with Llama 3.1 scaling."""
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if args.rope_scaling:
        s = args.rope_scaling
        factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old = s.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        smooth = ((old / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    freqs = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()
