"""Which tokens run in each step, and where their keys and values go.

Each step's batch is built in this order: every running sequence that has its prompt in the cache
adds one decode token, then prompts still being read add chunks until the step's token budget is
spent (so a long prompt never stalls the decodes for more than one chunk), then waiting requests
are admitted while there is budget, room in the batch and cache blocks. When the cache runs out
for a decode, the most recently admitted other sequence is preempted: its blocks are freed and it
goes back to the front of the queue, to recompute its tokens when there is room again (vLLM's
preemption by recompute).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .output import Output, Request
from .runner import SequenceStep


@dataclass(eq=False, kw_only=True)
class Sequence(Request):
    """A request as the engine runs it."""

    on_output: Callable[[Output], None]
    arrival: float = field(default_factory=time.monotonic)
    block_table: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose K/V are in the cache
    generator: torch.Generator | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilling(self) -> bool:
        """Still reading its prompt (or re-reading it after a preemption), rather than decoding."""
        return len(self.prompt_ids) + len(self.output_ids) - self.computed > 1 or not self.output_ids


@dataclass(frozen=True, kw_only=True)
class Scheduled:
    """One sequence's part of a step: its next ``tokens`` tokens, and whether to sample after them."""

    seq: Sequence
    tokens: int
    want_logits: bool  # a decode, or the last chunk of a prompt
    decode: bool = False  # one token after a cached context, rather than a prompt chunk

    def step(self) -> SequenceStep:
        seq = self.seq
        return SequenceStep(tokens=seq.all_ids[seq.computed : seq.computed + self.tokens], start_pos=seq.computed,
                            block_table=seq.block_table, want_logits=self.want_logits)


@dataclass(kw_only=True)
class ScheduledBatch:
    """A step's work, decodes first."""

    items: list[Scheduled] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def sequences(self) -> list[Sequence]:
        return [item.seq for item in self.items]

    @property
    def decode_tokens(self) -> int:
        return sum(1 for item in self.items if item.decode)

    @property
    def prefill_tokens(self) -> int:
        return sum(item.tokens for item in self.items if not item.decode)

    def steps(self) -> list[SequenceStep]:
        return [item.step() for item in self.items]


class BlockAllocator:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free = collections.deque(range(num_blocks))

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        return [self.free.popleft() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


class Batcher:
    """Builds each step's batch: owns the queues and the block allocator. ``max_num_seqs`` bounds the batch, ``max_step_tokens``
    a step's tokens while sequences are decoding, ``max_prefill_tokens`` those of a step that has only
    prompts to read; chunks other than a prompt's last are a multiple of ``chunk_multiple``."""

    def __init__(self, *, num_blocks: int, block_size: int, max_num_seqs: int, max_step_tokens: int,
                 max_prefill_tokens: int, chunk_multiple: int = 1):
        self.blocks = BlockAllocator(num_blocks)
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_step_tokens = max_step_tokens
        self.max_prefill_tokens = max(max_prefill_tokens, max_step_tokens)
        self.chunk_multiple = chunk_multiple
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def schedule(self) -> ScheduledBatch:
        """This step's batch. It reserves the blocks its tokens need (preempting for decodes if it must)."""
        batch = ScheduledBatch()
        budget = self.max_step_tokens
        for seq in list(self.running):  # decodes first: one token each
            if seq.prefilling or seq not in self.running:  # (an earlier decode's reservation may have preempted it)
                continue
            if not self._reserve(seq, seq.computed + 1, spare=batch.sequences):
                continue
            batch.items.append(Scheduled(seq=seq, tokens=1, want_logits=True, decode=True))
            budget -= 1
        if not batch:  # no decode waits on this step: read prompts in larger chunks (fewer, bigger matmuls)
            budget = self.max_prefill_tokens
        for seq in [s for s in self.running if s.prefilling]:  # then prompts being read, in chunks
            budget = self._add_chunk(seq, budget, batch)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._reserve(seq, min(len(seq.all_ids), seq.computed + budget), preempt=False):
                break
            self.waiting.popleft()
            self.running.append(seq)
            budget = self._add_chunk(seq, budget, batch)
        return batch

    def remove(self, seq: Sequence) -> None:
        """Take a finished or cancelled sequence out of the queues and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_table = []

    def _add_chunk(self, seq: Sequence, budget: int, batch: ScheduledBatch) -> int:
        remaining = len(seq.all_ids) - seq.computed
        n = min(remaining, budget)
        if n < remaining:  # a chunk that is not the last ends where the runner's next chunk may start
            n -= n % self.chunk_multiple
        if n <= 0 or not self._reserve(seq, seq.computed + n, preempt=False):
            return budget
        batch.items.append(Scheduled(seq=seq, tokens=n, want_logits=n == remaining))
        return budget - n

    def _reserve(self, seq: Sequence, tokens: int, preempt: bool = True, spare: list | None = None) -> bool:
        """Make ``seq``'s block table cover ``tokens`` positions.

        If the cache is full and ``preempt``, the newest running sequence that is not ``seq`` nor in
        ``spare`` (already scheduled this step) is preempted to make room.
        """
        needed = -(-tokens // self.block_size) - len(seq.block_table)
        while needed > 0:
            blocks = self.blocks.allocate(needed)
            if blocks is not None:
                seq.block_table.extend(blocks)
                return True
            victims = [s for s in self.running if s is not seq and s not in (spare or [])]
            if not preempt or not victims:
                return False
            self._preempt(victims[-1])
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's cache; it goes back to the front of the queue and recomputes its tokens."""
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_table, seq.computed = [], 0
        self.waiting.appendleft(seq)
        self.preemptions += 1
