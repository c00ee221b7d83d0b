"""The serving engine: continuous batching over a paged KV cache, with chunked prefill.

Every step builds one batch: each running sequence that has its prompt in the cache adds one
decode token, then prompts still being read add chunks until the step's token budget is spent (so
a long prompt never stalls the decodes for more than one chunk). Requests join at any step and
leave as soon as they finish; their cache blocks go back to the free list at once. When the cache
is full, the most recently admitted sequence is preempted and later recomputed.

The engine runs in one background thread; ``add_request`` and ``cancel`` may be called from any
thread, and outputs are delivered through each request's callback from the engine thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import TTError
from .runner import ModelRunner, SequenceStep
from .sampling import SamplingError, SamplingParams, sample

log = logging.getLogger("jupyter_tt.engine")


class EngineBusy(TTError):
    """Too many requests are waiting; the client should retry later."""

    status = 503


class PromptTooLong(TTError):
    """The prompt and the requested output do not fit the model's context."""


@dataclass
class Output:
    """What a request produced since its last output (``text`` and ``token_ids`` are the new part)."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # with finish_reason "error": what went wrong in the engine step


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_output: Callable[[Output], None]
    arrival: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose K/V are in the cache
    text: str = ""  # decoded output so far
    prefix_offset: int = 0  # incremental detokenization: output_ids[prefix_offset:read_offset] is
    read_offset: int = 0  # already in ``text`` and is decoded again only as context for the next tokens
    sent: int = 0  # characters of ``text`` already delivered
    generator: torch.Generator | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilling(self) -> bool:
        """Still reading its prompt (or re-reading it after a preemption), rather than decoding."""
        return len(self.all_ids) - self.computed > 1 or not self.output_ids


class BlockAllocator:
    def __init__(self, num_blocks: int):
        self.free = collections.deque(range(num_blocks))

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        return [self.free.popleft() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


class Engine:
    """Owns the running batch. ``max_num_seqs`` bounds the batch, ``max_step_tokens`` a step's tokens
    while sequences are decoding, ``max_prefill_tokens`` those of a step that has only prompts to read."""

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer,
        *,
        max_num_seqs: int = 16,
        max_step_tokens: int = 256,
        max_prefill_tokens: int = 2048,
        max_waiting: int = 256,
        max_model_len: int | None = None,
    ):
        if max_step_tokens < max_num_seqs + runner.prefill_chunk_multiple:
            raise ValueError(
                f"max_step_tokens ({max_step_tokens}) must leave room for a decode token of each of max_num_seqs "
                f"({max_num_seqs}) and one prompt chunk of {runner.prefill_chunk_multiple}: raise it or lower max_num_seqs"
            )
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.max_step_tokens = max_step_tokens
        self.max_prefill_tokens = max(max_prefill_tokens, max_step_tokens)
        self.max_waiting = max_waiting
        self.max_model_len = min(max_model_len or runner.args.max_seq_len, runner.args.max_seq_len, runner.max_tokens_in_cache)
        self.blocks = BlockAllocator(runner.num_blocks)
        self.eos_ids = {i for i in [getattr(tokenizer, "eos_token_id", None)] if i is not None}
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._cancelled: set[str] = set()
        self._wake = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0, "preemptions": 0}

    # ------------------------------------------------------------------ API (any thread)

    def add_request(
        self, prompt_ids: list[int], params: SamplingParams, on_output: Callable[[Output], None], request_id: str | None = None
    ) -> str:
        params.check()
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty: send at least one token")
        vocab = self.runner.args.vocab_size
        for param, ids in (("prompt", prompt_ids), ("stop_token_ids", params.stop_token_ids)):
            bad = next((t for t in ids if type(t) is not int or not 0 <= t < vocab), None)
            if bad is not None:
                raise SamplingError(f"{param} holds {bad!r}, which is not a token id of this model (0 to {vocab - 1})", param)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"the prompt has {len(prompt_ids)} tokens and max_tokens is {params.max_tokens}: together more than "
                f"this model's context of {self.max_model_len} tokens. Shorten the prompt or lower max_tokens"
            )
        if len(self.waiting) + len(self._incoming) >= self.max_waiting:
            raise EngineBusy(f"{self.max_waiting} requests are already waiting: retry later")
        seq = Sequence(request_id or f"req-{next(self._ids)}", list(prompt_ids), params, on_output)
        if params.seed is not None:
            seq.generator = torch.Generator().manual_seed(params.seed)
        with self._wake:
            self._incoming.append(seq)
            self._wake.notify()
        return seq.request_id

    def cancel(self, request_id: str) -> None:
        """Stop a request (e.g. its client went away); its blocks are freed at the next step."""
        with self._wake:
            self._cancelled.add(request_id)
            self._wake.notify()

    def start(self) -> "Engine":
        """Run the loop in a background thread (tests, embedding). A server should prefer ``run()``
        on its main thread: on CPUs, torch's OpenMP teams run ~2x slower from other threads."""
        self._thread = threading.Thread(target=self._loop, name="jupyter-tt-engine", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Run the loop in this thread until ``stop()``."""
        self._loop()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread:
            self._thread.join(10)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._incoming)

    @property
    def cache_usage(self) -> float:
        return 1.0 - len(self.blocks.free) / self.runner.num_blocks

    # ------------------------------------------------------------------ the loop (engine thread)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._incoming or self._cancelled or self.running or self.waiting):
                    self._wake.wait()
                if self._stopping:
                    break
            self.step()
        for seq in [*self.running, *self.waiting, *self._incoming]:
            self._finish(seq, "abort")

    def step(self) -> None:
        """One iteration: admit, cancel, schedule, run the model, sample, deliver."""
        with self._wake:
            self.waiting.extend(self._incoming)
            self._incoming.clear()
            cancelled, self._cancelled = self._cancelled, set()
        for seq in [s for s in [*self.running, *self.waiting] if s.request_id in cancelled]:
            self._finish(seq, "abort")

        work = self._schedule()
        if not work:
            return
        steps = [
            SequenceStep(seq.all_ids[seq.computed : seq.computed + n], seq.computed, seq.block_table, want)
            for seq, n, want in work
        ]
        done: set[int] = set()
        try:
            with torch.inference_mode():  # the logits are inference tensors: sample them in the same mode
                logits = self.runner.step(steps)
                self.stats["steps"] += 1
                row = 0
                for seq, n, want in work:
                    seq.computed += n
                    if want:
                        self._append(seq, logits[row])
                        row += 1
                    done.add(id(seq))
        except Exception as e:  # one bad step fails its own requests; the engine serves everyone else
            log.exception("jupyter-tt engine: a step of %d request(s) failed", len(work))
            self.stats["failed_steps"] = self.stats.get("failed_steps", 0) + 1
            for seq, _, _ in work:
                if id(seq) not in done and any(seq is s for s in [*self.running, *self.waiting]):
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")

    def _schedule(self) -> list[tuple[Sequence, int, bool]]:
        """(sequence, tokens to feed, whether its next-token logits are wanted) for this step."""
        budget = self.max_step_tokens
        work: list[tuple[Sequence, int, bool]] = []
        for seq in list(self.running):  # decodes first: one token each
            if seq.prefilling or seq not in self.running:
                continue
            if not self._reserve(seq, seq.computed + 1, spare=[s for s, _, _ in work]):
                continue
            work.append((seq, 1, True))
            budget -= 1
        if not work:  # no decode waits on this step: read prompts in larger chunks (fewer, bigger matmuls)
            budget = self.max_prefill_tokens
        for seq in [s for s in self.running if s.prefilling]:  # then prompts being read, in chunks
            budget = self._add_chunk(seq, budget, work)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._reserve(seq, min(len(seq.all_ids), seq.computed + budget), preempt=False):
                break
            self.waiting.popleft()
            self.running.append(seq)
            budget = self._add_chunk(seq, budget, work)
        self.stats["decode_tokens"] += sum(n for _, n, _ in work if n == 1)
        return work

    def _add_chunk(self, seq: Sequence, budget: int, work: list) -> int:
        remaining = len(seq.all_ids) - seq.computed
        n = min(remaining, budget)
        if n < remaining:  # a chunk that is not the last ends where the runner's next chunk may start
            n -= n % self.runner.prefill_chunk_multiple
        if n <= 0 or not self._reserve(seq, seq.computed + n, preempt=False):
            return budget
        work.append((seq, n, n == remaining))
        self.stats["prefill_tokens"] += n
        return budget - n

    def _reserve(self, seq: Sequence, tokens: int, preempt: bool = True, spare: list | None = None) -> bool:
        """Make ``seq``'s block table cover ``tokens`` positions.

        If the cache is full and ``preempt``, the newest running sequence that is not ``seq`` nor in
        ``spare`` (already scheduled this step) is preempted to make room.
        """
        bs = self.runner.block_size
        needed = -(-tokens // bs) - len(seq.block_table)
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
        self.stats["preemptions"] += 1

    def _append(self, seq: Sequence, logits: torch.Tensor) -> None:
        params = seq.params
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        if len(seq.output_ids) < params.min_tokens and stops:
            logits = logits.clone()
            logits[list(stops)] = float("-inf")
        token = sample(logits, params, seq.generator)
        seq.output_ids.append(token)
        reason = None
        if token in stops:
            reason = "stop"
        elif len(seq.output_ids) >= params.max_tokens or len(seq.all_ids) >= self.max_model_len:
            reason = "length"
        text = seq.text if reason == "stop" else seq.text + self._detokenize(seq)
        if params.stop and len(seq.output_ids) >= params.min_tokens:
            start = max(0, seq.sent - max(len(s) for s in params.stop))
            hits = [i for s in params.stop if (i := text.find(s, start)) != -1]
            if hits:
                text, reason = text[: min(hits)], "stop"
        seq.text = text
        if reason:
            self._finish(seq, reason, last_token=token)
            return
        # Hold back an incomplete UTF-8 character and what could be the start of a stop string.
        hold = max((len(s) - 1 for s in params.stop), default=0)
        ready = len(text) - hold
        while ready > seq.sent and text[ready - 1] == "\ufffd":
            ready -= 1
        if ready > seq.sent:
            seq.on_output(Output(seq.request_id, text[seq.sent : ready], [token], False, None, len(seq.prompt_ids), len(seq.output_ids)))
            seq.sent = ready
        else:
            seq.on_output(Output(seq.request_id, "", [token], False, None, len(seq.prompt_ids), len(seq.output_ids)))

    def _detokenize(self, seq: Sequence) -> str:
        """The text the newest tokens add (vLLM's incremental detokenization: a few tokens of context,
        so that a word's leading space survives; nothing while a UTF-8 character is incomplete)."""
        ids = seq.output_ids
        done = self.tokenizer.decode(ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
        text = self.tokenizer.decode(ids[seq.prefix_offset :], skip_special_tokens=True)
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        return text[len(done) :]

    def _finish(self, seq: Sequence, reason: str, last_token: int | None = None, error: str | None = None) -> None:
        for queue in (self.running, self.waiting, self._incoming):
            if seq in queue:
                queue.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_table = []
        seq.on_output(
            Output(
                seq.request_id, seq.text[seq.sent :], [last_token] if last_token is not None else [], True, reason,
                len(seq.prompt_ids), len(seq.output_ids), error,
            )
        )
        seq.sent = len(seq.text)
