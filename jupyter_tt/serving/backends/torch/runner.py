"""The torch reference runner: the model of ``model.py`` on the CPU (or CUDA where present).

It is the reference every other backend is checked against, and the fallback wherever OpenVINO
or a card is missing. Weights are float32, bfloat16 or int8 (weight-only, ``quantize_int8``).
On a CPU, ``threads.CpuThreads`` picks torch's thread count between steps (one while the host is
crowded); ``OMP_NUM_THREADS``, where set, fixes it instead.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ...checkpoint import Checkpoint
from ...engine.runner import ModelRunner, SequenceStep
from .model import Batch, Transformer, quantize_int8
from .threads import CpuThreads

#: Weight formats of the torch backend: name -> dtype of the KV cache on CUDA. On a CPU the cache
#: is float32 in every format: attention runs in float32 there (no bf16 matmul units), and a
#: bfloat16 cache would cost a conversion of the whole context in every layer of every step.
WEIGHT_FORMATS = {"int8": torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def fixed_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` fixes (a user who pins threads keeps them), else None."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


class TorchModelRunner(ModelRunner):
    """The model in plain torch on CPU (or CUDA where present)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        block_size: int = 16,
        kv_cache_bytes: int = 256 * 2**20,
        weights: str = "float32",
        device: str = "cpu",
    ):
        """``weights``: "float32" (exact, the reference), "bfloat16", or "int8" (weight-only, fastest on CPU)."""
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
        self.device = torch.device(device)
        dtype = WEIGHT_FORMATS[weights] if self.device.type == "cuda" else torch.float32
        self.args = checkpoint.args
        self.weights = weights
        self.block_size = block_size
        self.num_blocks = self.args.kv_cache_blocks(block_size, kv_cache_bytes, dtype)
        model = Transformer.from_weights(self.args, checkpoint.weights, torch.bfloat16 if weights == "bfloat16" else torch.float32)
        self.model = (quantize_int8(model) if weights == "int8" else model).to(self.device)
        a = self.args
        # Heads before blocks: a gathered context is [kv_heads, B, C, d], ready for batched matmuls.
        shape = (a.n_layers, 2, a.n_kv_heads, self.num_blocks, block_size, a.head_dim)
        if self.device.type == "cpu":  # numpy's zeros (calloc): the OS maps the pages as they are first written
            self.kv_cache = torch.from_numpy(np.zeros(shape, dtype=np.float32))
        else:
            self.kv_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.cpu_threads = CpuThreads(fixed_threads()) if self.device.type == "cpu" else None

    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
        if self.cpu_threads:
            self.cpu_threads.adjust()
        tokens, batch = self.build_batch(sequences)
        return self.model(tokens, batch, self.kv_cache).float()

    def build_batch(self, sequences: list[SequenceStep]) -> tuple[torch.Tensor, Batch]:
        bs = self.block_size
        B = len(sequences)
        q_lens = [len(s.tokens) for s in sequences]
        ctx_lens = [s.start_pos + q for s, q in zip(sequences, q_lens)]
        Q = max(q_lens)
        C = -(-max(ctx_lens) // bs) * bs  # context length padded to whole blocks
        offsets = [0]
        for q in q_lens:
            offsets.append(offsets[-1] + q)

        tables = torch.zeros(B, C // bs, dtype=torch.long)
        for b, (s, n) in enumerate(zip(sequences, ctx_lens)):
            used = s.block_table[: -(-n // bs)]
            tables[b, : len(used)] = torch.tensor(used, dtype=torch.long)
        ctx_pos = torch.arange(C)

        start = torch.tensor([s.start_pos for s in sequences])
        q_len_t = torch.tensor(q_lens)
        qi = torch.arange(Q)
        query_pos = start[:, None] + qi[None, :]  # [B, Q]
        valid_q = qi[None, :] < q_len_t[:, None]
        mask = ctx_pos[None, None, :] <= query_pos[:, :, None]  # causal within the context
        mask = torch.where(valid_q[:, :, None], mask, ctx_pos[None, None, :] == 0)  # padding rows see slot 0 only
        offset_t = torch.tensor(offsets[:-1])
        unpack = offset_t[:, None] + torch.minimum(qi[None, :], q_len_t[:, None] - 1)
        pack = torch.cat([b * Q + torch.arange(q) for b, q in enumerate(q_lens)])
        positions = torch.cat([torch.arange(s.start_pos, s.start_pos + q) for s, q in zip(sequences, q_lens)])
        token_tables = torch.repeat_interleave(torch.arange(B), q_len_t)
        slots = tables[token_tables, positions // bs] * bs + positions % bs
        logits_index = torch.tensor([offsets[b + 1] - 1 for b, s in enumerate(sequences) if s.want_logits], dtype=torch.long)
        tokens = torch.tensor([t for s in sequences for t in s.tokens], dtype=torch.long)
        d = self.device
        bias = None
        if Q == 1:  # decode-only: an additive mask [kv_heads * B, 1, C], shared by every layer
            bias = torch.zeros(B, 1, C).masked_fill_(~mask[:, :1], float("-inf")).repeat(self.args.n_kv_heads, 1, 1).to(d)
        batch = Batch(
            positions=positions.to(d),
            slots=slots.to(d),
            context_blocks=tables.flatten().to(d),
            attn_mask=mask[:, None].to(d),
            attn_bias=bias,
            causal=B == 1 and Q > 1 and sequences[0].start_pos == 0,
            unpack=unpack.to(d),
            pack=pack.to(d),
            logits_index=logits_index.to(d),
        )
        return tokens.to(d), batch
