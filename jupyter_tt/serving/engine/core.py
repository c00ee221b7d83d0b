"""The engine loop: continuous batching over a paged KV cache, with chunked prefill.

Each step: take in new requests and cancellations, let the ``Batcher`` build the batch, run it
on the ``ModelRunner``, sample the sequences that want a token, and pass each token through the
``OutputStage`` to its request's callback. Requests join at any step and leave as soon as they
finish; their cache blocks go back to the free list at once.

The engine runs in one background thread; ``add_request`` and ``cancel`` may be called from any
thread, and outputs are delivered through each request's callback from the engine thread.

Nothing one request does stops the loop: a step that fails (in the model, in scheduling, in a
callback) fails the requests it touched, and the loop goes on. ``health()`` says when it cannot serve
(its loop died, or one step has run for longer than ``step_timeout``), so that the HTTP layer answers
the requests that wait on it with an error instead of waiting for ever.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Callable

import torch

from ...errors import TTError
from .batching import Batcher, Sequence
from .output import FinishReason, Output, OutputStage
from .runner import ModelRunner
from .sampling import SamplingError, SamplingParams, sample

log = logging.getLogger("jupyter_tt.engine")


class EngineBusy(TTError):
    """Too many requests are waiting; the client should retry later."""

    status = 503


class PromptTooLong(TTError):
    """The prompt and the requested output do not fit the model's context."""


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
        step_timeout: float = 120.0,
    ):
        if max_step_tokens < max_num_seqs + runner.prefill_chunk_multiple:
            raise ValueError(
                f"max_step_tokens ({max_step_tokens}) must leave room for a decode token of each of max_num_seqs "
                f"({max_num_seqs}) and one prompt chunk of {runner.prefill_chunk_multiple}: raise it or lower max_num_seqs"
            )
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.max_model_len = min(max_model_len or runner.args.max_seq_len, runner.args.max_seq_len, runner.max_tokens_in_cache)
        self.batcher = Batcher(
            num_blocks=runner.num_blocks, block_size=runner.block_size, max_num_seqs=max_num_seqs,
            max_step_tokens=max_step_tokens, max_prefill_tokens=max_prefill_tokens,
            chunk_multiple=runner.prefill_chunk_multiple,
        )
        self.output = OutputStage(tokenizer, self.max_model_len)
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._cancelled: set[str] = set()
        self._wake = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: A step that runs longer than this is stuck (vLLM: VLLM_ENGINE_ITERATION_TIMEOUT_S). A CPU step of
        #: the embedded model takes well under a second, even on a crowded host.
        self.step_timeout = step_timeout
        self._step_started: float | None = None  # while a step runs: when it began (monotonic)
        self.failure: str | None = None  # why the loop ended, if something killed it
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0, "failed_steps": 0}

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
        if self.num_waiting >= self.max_waiting:
            raise EngineBusy(f"{self.max_waiting} requests are already waiting: retry later")
        seq = Sequence(request_id=request_id or f"req-{next(self._ids)}", prompt_ids=list(prompt_ids), params=params,
                       on_output=on_output)
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

    def warm_up(self, prompt_tokens: int = 24, max_steps: int = 64) -> None:
        """One short greedy request through prefill and decode, in this thread, before serving (vLLM also runs
        its model before it reports healthy): the first user's request then does not pay for what the first
        calls of a runner do once (allocations, kernel choices; on a loaded 2-core host they took seconds).
        Call it before ``start()``/``run()``; the stats count served work only."""
        finished: list[Output] = []
        vocab = self.runner.args.vocab_size
        prompt = [1 + i % (vocab - 1) for i in range(min(prompt_tokens, self.max_model_len - 2))]
        self.add_request(prompt, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True),
                         lambda out: finished.append(out) if out.finished else None, request_id="warm-up")
        for _ in range(max_steps):
            if finished:
                break
            self.step()
        self.stats = dict.fromkeys(self.stats, 0)

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

    def health(self) -> str | None:
        """None while the engine can serve; else why not, in words (its loop died, or a step is stuck)."""
        if self.failure:
            return f"the engine stopped ({self.failure})"
        started = self._step_started
        if started is not None and time.monotonic() - started > self.step_timeout:
            return f"the engine has been in one step for {time.monotonic() - started:.0f} s (its limit is {self.step_timeout:g} s)"
        return None

    @property
    def num_running(self) -> int:
        return len(self.batcher.running)

    @property
    def num_waiting(self) -> int:
        return len(self.batcher.waiting) + len(self._incoming)

    @property
    def has_work(self) -> bool:
        return bool(self.batcher.running or self.batcher.waiting or self._incoming or self._cancelled)

    @property
    def free_blocks(self) -> int:
        return len(self.batcher.blocks.free)

    @property
    def cache_usage(self) -> float:
        return 1.0 - self.free_blocks / self.runner.num_blocks

    # ------------------------------------------------------------------ the loop (engine thread)

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._stopping or self.has_work):
                        self._wake.wait()
                    if self._stopping:
                        break
                self.step()
        except KeyboardInterrupt:  # Ctrl-C on `jupyter tt serve`: a stop, not a failure (its requests are aborted)
            self._stopping = True
            raise
        except BaseException as e:  # a bug in the loop itself: say so to every waiting request, then die
            self.failure = f"{type(e).__name__}: {e}"
            log.exception("jupyter-tt engine: the engine loop died")
            raise
        finally:
            with self._wake:
                self.batcher.waiting.extend(self._incoming)
                self._incoming.clear()
            reason = FinishReason.ERROR if self.failure else FinishReason.ABORT
            for seq in [*self.batcher.running, *self.batcher.waiting]:
                self._finish(seq, reason, error=self.failure)

    def step(self) -> None:
        """One iteration: admit, cancel, schedule, run the model, sample, deliver."""
        self._step_started = time.monotonic()
        try:
            self._step()
        finally:
            self._step_started = None

    def _step(self) -> None:
        scheduler = self.batcher
        with self._wake:
            scheduler.waiting.extend(self._incoming)
            self._incoming.clear()
            cancelled, self._cancelled = self._cancelled, set()
        try:
            for seq in [s for s in [*scheduler.running, *scheduler.waiting] if s.request_id in cancelled]:
                self._finish(seq, FinishReason.ABORT)
            batch = scheduler.schedule()
        except Exception as e:  # the queues may be half-changed: end what they hold, serve what comes next
            log.exception("jupyter-tt engine: scheduling failed; the requests it held end with an error")
            self.stats["failed_steps"] += 1
            for seq in [*scheduler.running, *scheduler.waiting]:
                self._finish(seq, FinishReason.ERROR, error=f"{type(e).__name__}: {e}")
            return
        if not batch:
            return
        self.stats["decode_tokens"] += batch.decode_tokens
        self.stats["prefill_tokens"] += batch.prefill_tokens
        done: set[int] = set()
        try:
            with torch.inference_mode():  # the logits are inference tensors: sample them in the same mode
                logits = self.runner.step(batch.steps())
                self.stats["steps"] += 1
                row = 0
                for item in batch.items:
                    item.seq.computed += item.tokens
                    if item.want_logits:
                        self._sample(item.seq, logits[row])
                        row += 1
                    done.add(id(item.seq))
        except Exception as e:  # one bad step fails its own requests; the engine serves everyone else
            log.exception("jupyter-tt engine: a step of %d request(s) failed", len(batch.items))
            self.stats["failed_steps"] += 1
            for seq in batch.sequences:
                if id(seq) not in done and any(seq is s for s in [*scheduler.running, *scheduler.waiting]):
                    self._finish(seq, FinishReason.ERROR, error=f"{type(e).__name__}: {e}")

    @property
    def preemptions(self) -> int:
        return self.batcher.preemptions

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> None:
        params = seq.params
        stops = self.output.stop_ids(params)
        if len(seq.output_ids) < params.min_tokens and stops:
            logits = logits.clone()
            logits[list(stops)] = float("-inf")
        out = self.output.append(seq, sample(logits, params, seq.generator))
        if out.finished:
            self.batcher.remove(seq)
        self._deliver(seq, out)

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        self.batcher.remove(seq)
        self._deliver(seq, self.output.finish(seq, reason, error=error))

    def _deliver(self, seq: Sequence, out: Output) -> None:
        """Hand an output to its request's callback; a callback that fails ends that request only."""
        try:
            seq.on_output(out)
        except Exception:
            log.exception("jupyter-tt engine: the callback of %s failed; the request is dropped", seq.request_id)
            self.batcher.remove(seq)
