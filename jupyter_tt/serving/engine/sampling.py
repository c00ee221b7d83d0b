"""Sampling parameters (OpenAI's, plus vLLM's extras) and turning logits into tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import TTError


class SamplingError(TTError):
    """A sampling parameter out of range; ``param`` names it (for the OpenAI error body)."""

    def __init__(self, message: str, param: str):
        super().__init__(message, 400)
        self.param = param


#: Most token ids a request may name as stops (vLLM sets no bound; one keeps a request's work bounded).
MAX_STOP_TOKEN_IDS = 64


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: all tokens
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0

    def check(self) -> "SamplingParams":
        def bad(param, why):
            raise SamplingError(f"{param} {why}", param)

        if type(self.max_tokens) is not int or self.max_tokens < 1:
            bad("max_tokens", f"must be a whole number of at least 1, not {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 2.0:
            bad("temperature", f"must be between 0 and 2, not {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], not {self.top_p!r}")
        if type(self.top_k) is not int or (self.top_k < 1 and self.top_k != -1):
            bad("top_k", f"must be -1 (no limit) or at least 1, not {self.top_k!r}")
        if type(self.min_tokens) is not int or not 0 <= self.min_tokens <= self.max_tokens:
            bad("min_tokens", f"must be between 0 and max_tokens ({self.max_tokens}), not {self.min_tokens!r}")
        if len(self.stop) > 16 or any(not isinstance(s, str) or not s or len(s) > 1000 for s in self.stop):
            bad("stop", "must be at most 16 non-empty strings of at most 1000 characters")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS or any(type(t) is not int for t in self.stop_token_ids):
            bad("stop_token_ids", f"must be a list of at most {MAX_STOP_TOKEN_IDS} token ids (whole numbers)")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**63):
            bad("seed", f"must be a whole number from 0 to 2**63 - 1, not {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits ``[vocab]`` (float32)."""
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs * keep)
    return int(torch.multinomial(probs, 1, generator=generator))
