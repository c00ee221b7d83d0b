"""The model-runner contract the engine drives; every backend under ``backends/`` implements it.

A step hands the runner, for each sequence in the running batch, the new tokens (a prefill chunk or
one decode token), where they start, and the sequence's block table; the runner returns the
next-token logits of the sequences that asked for them. The engine owns the block allocator; the
runner owns the cache memory.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from ..llama import ModelArgs


@dataclass(frozen=True, kw_only=True)
class SequenceStep:
    """One sequence's part of a step: ``tokens`` at positions ``start_pos...``, cached through ``block_table``."""

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
