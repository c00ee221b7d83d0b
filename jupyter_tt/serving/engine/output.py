"""The output stage: from each sampled token to what the client sees.

It decodes the new tokens into text incrementally, checks the stops (stop tokens and EOS, the
length limits, stop strings) and holds back what could still change: an incomplete UTF-8
character, or text that may be the start of a stop string. The engine calls ``OutputStage.append``
once per sampled token and delivers the ``Output`` it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .sampling import SamplingParams


class FinishReason(str, enum.Enum):
    """Why a request ended; the values are OpenAI's ``finish_reason`` (plus ``abort`` and ``error``)."""

    STOP = "stop"  # a stop token, EOS or a stop string
    LENGTH = "length"  # max_tokens, or the model's context
    ABORT = "abort"  # cancelled, or the engine stopped
    ERROR = "error"  # the engine step that ran it failed (``Output.error`` says how)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Output:
    """What a request produced since its last output (``text`` and ``token_ids`` are the new part)."""

    request_id: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None  # set on the request's last output only
    error: str | None = None  # with FinishReason.ERROR: what went wrong in the engine step

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class TextState:
    """One request's decoded text, and how far it has been decoded and delivered."""

    text: str = ""
    prefix_offset: int = 0  # output_ids[prefix_offset:read_offset] is already in ``text``; it is
    read_offset: int = 0  # decoded again only as context for the next tokens
    sent: int = 0  # characters of ``text`` already delivered


@dataclass(eq=False, kw_only=True)
class Request:
    """What the output stage needs of a request: its ids, its parameters and its text so far."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    text: TextState = field(default_factory=TextState)


class OutputStage:
    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos_ids = {i for i in [getattr(tokenizer, "eos_token_id", None)] if i is not None}

    def stop_ids(self, params: SamplingParams) -> set[int]:
        """The tokens that end this request (its stop_token_ids, and EOS unless ignore_eos)."""
        return set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)

    def append(self, req: Request, token: int) -> Output:
        """Add a sampled token to ``req``; the output to deliver (finished if the request ends here)."""
        params, state = req.params, req.text
        req.output_ids.append(token)
        reason = None
        if token in self.stop_ids(params):
            reason = FinishReason.STOP
        elif len(req.output_ids) >= params.max_tokens or len(req.prompt_ids) + len(req.output_ids) >= self.max_model_len:
            reason = FinishReason.LENGTH
        text = state.text if reason is FinishReason.STOP else state.text + self._detokenize(req)
        if params.stop and len(req.output_ids) >= params.min_tokens:
            start = max(0, state.sent - max(len(s) for s in params.stop))
            hits = [i for s in params.stop if (i := text.find(s, start)) != -1]
            if hits:
                text, reason = text[: min(hits)], FinishReason.STOP
        state.text = text
        if reason:
            return self.finish(req, reason, last_token=token)
        # Hold back an incomplete UTF-8 character and what could be the start of a stop string.
        hold = max((len(s) - 1 for s in params.stop), default=0)
        ready = len(text) - hold
        while ready > state.sent and text[ready - 1] == "\ufffd":
            ready -= 1
        new = text[state.sent : ready] if ready > state.sent else ""
        state.sent += len(new)
        return self._output(req, new, [token])

    def finish(self, req: Request, reason: FinishReason, *, last_token: int | None = None, error: str | None = None) -> Output:
        """The request's last output: whatever text was held back, and why it ended."""
        state = req.text
        rest, state.sent = state.text[state.sent :], len(state.text)
        return self._output(req, rest, [last_token] if last_token is not None else [], reason, error)

    @staticmethod
    def _output(req: Request, text: str, token_ids: list[int], reason: FinishReason | None = None,
                error: str | None = None) -> Output:
        return Output(request_id=req.request_id, text=text, token_ids=token_ids, prompt_tokens=len(req.prompt_ids),
                      completion_tokens=len(req.output_ids), finish_reason=reason, error=error)

    def _detokenize(self, req: Request) -> str:
        """The text the newest tokens add (vLLM's incremental detokenization: a few tokens of context,
        so that a word's leading space survives; nothing while a UTF-8 character is incomplete)."""
        ids, state = req.output_ids, req.text
        done = self.tokenizer.decode(ids[state.prefix_offset : state.read_offset], skip_special_tokens=True)
        text = self.tokenizer.decode(ids[state.prefix_offset :], skip_special_tokens=True)
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        state.prefix_offset, state.read_offset = state.read_offset, len(ids)
        return text[len(done) :]
