"""A streaming benchmark client for OpenAI-compatible servers, with vLLM's metric definitions.

What ``vllm bench serve`` measures, computed the same way (vllm/benchmarks/serve.py and
lib/endpoint_request_func.py):

- TTFT: from sending the request to the first streamed chunk that has ``choices``;
- ITL: the gaps between later chunks with ``choices``;
- E2EL: from sending the request to the end of the stream;
- TPOT per request: (E2EL - TTFT) / (output tokens - 1), for requests with more than one token;
- output tokens: the server's ``usage`` (``stream_options.include_usage``); where a server sends
  none, the tokenizer's count of the generated text;
- throughput: output tokens of the successful requests over the run's wall time.

Requests run closed-loop: at most ``concurrency`` in flight, the next one sent as one finishes.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx


@dataclass
class Prompt:
    text: str
    token_ids: list[int]


@dataclass
class RequestResult:
    prompt_tokens: int
    success: bool = False
    error: str = ""
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL, seconds
    output_tokens: int = 0
    text: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def random_prompts(tokenizer, n: int, input_len: int, seed: int) -> list[Prompt]:
    """``n`` prompts of exactly ``input_len`` tokens of ``tokenizer`` (random ordinary tokens, as vLLM's
    random dataset; the text is re-encoded and trimmed or extended until its length is exact)."""
    rng = random.Random(seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    prompts = []
    for _ in range(n):
        ids = [rng.choice(vocab) for _ in range(input_len)]
        for _attempt in range(20):
            text = tokenizer.decode(ids)
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == input_len:
                break
            ids = ids[:input_len] + [rng.choice(vocab) for _ in range(input_len - len(ids))]
        else:
            raise RuntimeError(f"could not make a prompt of exactly {input_len} tokens")
        prompts.append(Prompt(text=text, token_ids=ids))
    return prompts


async def send_completion(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: Prompt,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    extra_body: dict[str, Any] | None = None,
) -> RequestResult:
    """One streaming ``/v1/completions`` request, timed chunk by chunk."""
    result = RequestResult(prompt_tokens=len(prompt.token_ids))
    body = {
        "model": model,
        "prompt": prompt.text,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra_body or {}),
    }
    start = time.perf_counter()
    last = start
    usage_tokens = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                now = time.perf_counter()
                if chunk.get("choices"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    result.text += chunk["choices"][0].get("text") or ""
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
        result.latency = time.perf_counter() - start
        result.output_tokens = usage_tokens if usage_tokens is not None else count_tokens(result.text)
        result.success = result.ttft > 0
        if not result.success:
            result.error = "the stream ended without any tokens"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


@dataclass
class RunResult:
    concurrency: int
    input_len: int
    output_len: int
    duration: float
    requests: list[RequestResult]

    @property
    def succeeded(self) -> list[RequestResult]:
        return [r for r in self.requests if r.success]

    def summary(self) -> dict[str, Any]:
        ok = self.succeeded
        ttfts = [r.ttft * 1000 for r in ok]
        tpots = [t * 1000 for r in ok if (t := r.tpot) is not None]
        itls = [x * 1000 for r in ok for x in r.itl]
        out = sum(r.output_tokens for r in ok)
        return {
            "concurrency": self.concurrency,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "completed": len(ok),
            "failed": len(self.requests) - len(ok),
            "errors": sorted({r.error for r in self.requests if not r.success}),
            "duration": self.duration,
            "total_output_tokens": out,
            "output_throughput": out / self.duration if self.duration else 0.0,
            "median_ttft_ms": statistics.median(ttfts) if ttfts else None,
            "median_tpot_ms": statistics.median(tpots) if tpots else None,
            "median_itl_ms": statistics.median(itls) if itls else None,
            "mean_ttft_ms": statistics.fmean(ttfts) if ttfts else None,
            "mean_tpot_ms": statistics.fmean(tpots) if tpots else None,
        }


async def run(
    base_url: str,
    model: str,
    prompts: list[Prompt],
    output_len: int,
    concurrency: int,
    count_tokens: Callable[[str], int],
    *,
    warmup_prompts: list[Prompt] = (),
    extra_body: dict[str, Any] | None = None,
    timeout: float = 600.0,
) -> RunResult:
    """Send every prompt with at most ``concurrency`` in flight, after the untimed ``warmup_prompts``
    (other prompts than the timed ones, so that no server's prefix cache serves a timed one)."""
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(p: Prompt) -> RequestResult:
            return await send_completion(client, url, model, p, output_len, count_tokens, extra_body)

        for p in warmup_prompts:
            warm = await one(p)
            if not warm.success:
                raise RuntimeError(f"warm-up request failed: {warm.error}")
        gate = asyncio.Semaphore(concurrency)

        async def gated(p: Prompt) -> RequestResult:
            async with gate:
                return await one(p)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(p) for p in prompts))
        duration = time.perf_counter() - start
    return RunResult(concurrency, len(prompts[0].token_ids), output_len, duration, list(results))
