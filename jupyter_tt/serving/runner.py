"""The model-runner interface the engine drives, and its torch implementation.

A step hands the runner, for each sequence in the running batch, the new tokens (a prefill chunk or
one decode token), where they start, and the sequence's block table; the runner returns the
next-token logits of the sequences that asked for them. The engine owns the block allocator; the
runner owns the cache memory. The ttnn backend implements the same ``ModelRunner``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint, ModelArgs
from .model import Batch, Transformer, quantize_int8

#: Weight formats of the torch backend: name -> dtype of the KV cache on CUDA. On a CPU the cache
#: is float32 in every format: attention runs in float32 there (no bf16 matmul units), and a
#: bfloat16 cache would cost a conversion of the whole context in every layer of every step.
WEIGHT_FORMATS = {"int8": torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class SequenceStep:
    tokens: list[int]
    start_pos: int
    block_table: list[int]
    want_logits: bool = True


class ModelRunner(abc.ABC):
    """Runs the model over one step of a continuous batch on a paged KV cache."""

    args: ModelArgs
    block_size: int
    num_blocks: int
    #: prompt chunks other than the last are a multiple of this many tokens (ttnn fills whole blocks)
    prefill_chunk_multiple: int = 1

    @abc.abstractmethod
    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
        """Float logits ``[S, vocab]`` for the sequences with ``want_logits``, in their order."""

    @property
    def max_tokens_in_cache(self) -> int:
        return self.block_size * self.num_blocks


# Helpers for runners that prefill one sequence at a time and decode a padded batch (ttnn, tt_transformers).


def decode_indices(sequences: list[SequenceStep]) -> list[int]:
    """The sequences that decode: one token after a cached context (a whole prompt of one token prefills)."""
    return [i for i, s in enumerate(sequences) if len(s.tokens) == 1 and s.start_pos > 0]


def page_table(block_tables: list[list[int]], rows: int, width: int, scratch: int) -> torch.Tensor:
    """Block tables as an int32 ``[rows, width]`` tensor, padded (and padding rows filled) with ``scratch``."""
    out = torch.full((rows, width), scratch, dtype=torch.int32)
    for i, table in enumerate(block_tables):
        out[i, : min(len(table), width)] = torch.tensor(table[:width], dtype=torch.int32)
    return out


def wanted_logits(logits: dict[int, torch.Tensor], sequences: list[SequenceStep], vocab_size: int) -> torch.Tensor:
    """``ModelRunner.step``'s result from per-sequence logits: the wanted ones, in order."""
    wanted = [logits[i] for i, s in enumerate(sequences) if s.want_logits]
    return torch.stack(wanted) if wanted else torch.empty(0, vocab_size)

def kv_cache_blocks(args: ModelArgs, block_size: int, budget_bytes: int, dtype: torch.dtype) -> int:
    per_block = args.n_layers * 2 * block_size * args.n_kv_heads * args.head_dim * torch.finfo(dtype).bits // 8
    return max(budget_bytes // per_block, 1)


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
        self.num_blocks = kv_cache_blocks(self.args, block_size, kv_cache_bytes, dtype)
        model = Transformer.from_weights(self.args, checkpoint.weights, torch.bfloat16 if weights == "bfloat16" else torch.float32)
        self.model = (quantize_int8(model) if weights == "int8" else model).to(self.device)
        a = self.args
        # Heads before blocks: a gathered context is [kv_heads, B, C, d], ready for batched matmuls.
        self.kv_cache = torch.zeros(
            a.n_layers, 2, a.n_kv_heads, self.num_blocks, block_size, a.head_dim, dtype=dtype, device=self.device
        )

    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
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
