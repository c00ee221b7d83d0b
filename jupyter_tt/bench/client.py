"""A streaming benchmark client for OpenAI-compatible servers, with vLLM's metric definitions.

What ``vllm bench serve`` measures, computed the same way (vllm/benchmarks/serve.py and
lib/endpoint_request_func.py):

- TTFT: from sending the request to the first streamed chunk that has ``choices``;
- ITL: the gaps between later chunks with ``choices``;
- E2EL: from sending the request to the end of the stream;
- TPOT per request: (E2EL - TTFT) / (output tokens - 1), for requests with more than one token;
- output tokens: the server's ``usage`` (``stream_options.include_usage``); where a server sends
  none, the tokenizer's count of the generated text;
- throughput: request, output and total (input + output) tokens of the successful requests over
  the run's duration; goodput: requests per second that met every given SLO (TTFT, TPOT, E2EL);
- statistics: mean, median, population std and linearly interpolated percentiles (numpy's default).

A request that the server stops answering fails instead of hanging the run: ``stall_timeout`` bounds
every wait for the server (connecting, the answer's head, each chunk), and an error event inside a
stream (``data: {"error": ...}``, as vLLM and jupyter-tt send) fails its request with that message.

Requests go closed-loop (at most ``concurrency`` in flight, the next one sent as one finishes),
open-loop (arrivals at ``request_rate`` per second, Poisson, or gamma with ``burstiness`` != 1, as
vLLM draws them), or both (arrivals at a rate, capped in flight).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
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
    """One streaming ``/v1/completions`` request, timed chunk by chunk. It never raises: a failure is
    the result's ``error`` (the client's timeouts bound how long the server may stay silent)."""
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
    ended = False  # the stream's own end ([DONE]), rather than a connection that just closed
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
                    ended = True
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise json.JSONDecodeError("a chunk is not a JSON object", data, 0)
                if isinstance(chunk.get("error"), dict):  # the server gave up on this request mid-stream
                    result.error = f"the server ended the stream with an error: {str(chunk['error'].get('message'))[:200]}"
                    return result
                now = time.perf_counter()
                usage = chunk.get("usage") or {}
                if chunk.get("choices"):
                    # A server that reports usage with every chunk says how many tokens the chunk holds:
                    # its gap is then shared by that many tokens (one ITL each), else it is one token.
                    count = usage["completion_tokens"] - (usage_tokens or 0) if "completion_tokens" in usage else 1
                    if result.ttft == 0.0:
                        result.ttft = now - start
                        result.itl.extend([0.0] * (count - 1))  # tokens that came with the first one
                    else:
                        result.itl.extend([(now - last) / max(count, 1)] * max(count, 1))
                    last = now
                    result.text += chunk["choices"][0].get("text") or ""
                if "completion_tokens" in usage:
                    usage_tokens = usage["completion_tokens"]
        result.latency = time.perf_counter() - start
        result.output_tokens = usage_tokens if usage_tokens is not None else count_tokens(result.text)
        result.success = result.ttft > 0 and ended
        if not ended:
            result.error = "the server closed the stream before its end ([DONE])"
        elif not result.success:
            result.error = "the stream ended without any tokens"
    except httpx.ReadTimeout:
        result.error = f"ReadTimeout: the server sent nothing for {client.timeout.read:g} s"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


def percentile(values: list[float], p: float) -> float:
    """numpy.percentile's default (linear interpolation between closest ranks)."""
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = math.floor(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def describe(name: str, values_ms: list[float], percentiles=(50, 90, 99)) -> dict[str, float | None]:
    """``mean_<name>_ms``, ``median_``, ``std_`` (population, as numpy) and ``p<N>_``, or None without values."""
    out: dict[str, float | None] = {}
    v = values_ms
    out[f"mean_{name}_ms"] = statistics.fmean(v) if v else None
    out[f"median_{name}_ms"] = statistics.median(v) if v else None
    out[f"std_{name}_ms"] = statistics.pstdev(v) if v else None
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = percentile(v, p) if v else None
    return out


@dataclass
class RunResult:
    concurrency: int | None  # most requests in flight (None: no cap)
    input_len: int
    output_len: int
    duration: float
    requests: list[RequestResult]
    request_rate: float = math.inf
    burstiness: float = 1.0
    seed: int | None = None
    cancelled: bool = False

    @property
    def succeeded(self) -> list[RequestResult]:
        return [r for r in self.requests if r.success]

    def summary(self, slo_ms: dict[str, float] | None = None) -> dict[str, Any]:
        """``vllm bench serve``'s result fields, then per-request arrays. ``slo_ms``: goodput SLOs, any of
        ``ttft``, ``tpot``, ``e2el`` in ms (a request is good when it meets all of them)."""
        ok = self.succeeded
        ttfts = [r.ttft * 1000 for r in ok]
        tpots = [t * 1000 for r in ok if (t := r.tpot) is not None]
        itls = [x * 1000 for r in ok for x in r.itl]
        e2els = [r.latency * 1000 for r in ok]
        out_tokens = sum(r.output_tokens for r in ok)
        in_tokens = sum(r.prompt_tokens for r in ok)
        per_second = (lambda x: x / self.duration) if self.duration else (lambda x: 0.0)
        summary: dict[str, Any] = {
            "concurrency": self.concurrency, "max_concurrency": self.concurrency,
            "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
            "burstiness": self.burstiness, "seed": self.seed, "input_len": self.input_len, "output_len": self.output_len,
            "num_prompts": len(self.requests), "cancelled": self.cancelled,
            "completed": len(ok), "failed": len(self.requests) - len(ok),
            "duration": self.duration,
            "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
            "request_throughput": per_second(len(ok)),
            "output_throughput": per_second(out_tokens),
            "total_token_throughput": per_second(in_tokens + out_tokens),
        }
        if slo_ms:
            good = [r for r in ok if _meets(r, slo_ms)]
            summary["request_goodput"] = per_second(len(good))
            summary["goodput_slo_ms"] = dict(slo_ms)
        for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
            summary |= describe(name, values)
        summary |= {
            "input_lens": [r.prompt_tokens for r in self.requests],
            "output_lens": [r.output_tokens if r.success else 0 for r in self.requests],
            "ttfts": [r.ttft if r.success else None for r in self.requests],  # seconds, as vLLM's arrays
            "itls": [r.itl for r in self.requests],
            "e2els": [r.latency if r.success else None for r in self.requests],
            "errors": [r.error for r in self.requests],
        }
        return summary


def _meets(r: RequestResult, slo_ms: dict[str, float]) -> bool:
    measured = {"ttft": r.ttft * 1000, "e2el": r.latency * 1000, "tpot": (r.tpot or 0.0) * 1000}
    return all(measured[k] <= v for k, v in slo_ms.items())


def arrival_gaps(n: int, request_rate: float, burstiness: float, seed: int | None,
                 ramp: tuple[str, float, float] | None = None) -> list[float]:
    """Seconds before each of ``n`` requests (vLLM: gamma with shape ``burstiness`` and mean 1/rate;
    burstiness 1 is a Poisson process; an infinite rate sends everything at once). ``ramp``:
    (``"linear"`` or ``"exponential"``, start rate, end rate): the rate goes from start to end over
    the run, as vLLM's ``--ramp-up-strategy`` does, instead of ``request_rate``."""
    if ramp is None and math.isinf(request_rate):
        return [0.0] * n
    rates = [request_rate] * n
    if ramp is not None:
        kind, start, end = ramp
        if kind not in ("linear", "exponential") or start <= 0 or end <= 0:
            raise ValueError("a ramp is linear or exponential, from one positive rate to another")
        progress = [i / max(n - 1, 1) for i in range(n)]
        rates = [start + (end - start) * p if kind == "linear" else start * (end / start) ** p for p in progress]
    if min(rates, default=1) <= 0 or burstiness <= 0:
        raise ValueError("request_rate and burstiness must be positive")
    rng = random.Random(seed)
    return [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for rate in rates]


async def run(
    base_url: str,
    model: str,
    prompts: list[Prompt],
    output_len: int,
    concurrency: int | None,
    count_tokens: Callable[[str], int],
    *,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    seed: int | None = None,
    ramp: tuple[str, float, float] | None = None,
    warmup_prompts: Sequence[Prompt] = (),
    extra_body: dict[str, Any] | None = None,
    stall_timeout: float = 300.0,
    on_result: Callable[[RequestResult], None] | None = None,
    cancel: asyncio.Event | None = None,
    api_key: str | None = None,
) -> RunResult:
    """Send every prompt (at ``request_rate``, at most ``concurrency`` in flight) after the untimed
    ``warmup_prompts``, sent under the same cap (other prompts than the timed ones, so that no
    server's prefix cache serves a timed one). ``on_result`` sees each finished request; setting
    ``cancel`` stops sending, aborts what is in flight (recorded as failed: "cancelled") and returns.
    ``stall_timeout``: seconds the server may send nothing on a request (before its first token too)
    before that request fails; a run therefore always ends."""
    base = base_url.rstrip("/")
    url = (base if base.endswith("/v1") else base + "/v1") + "/completions"
    cap = concurrency or len(prompts) + len(warmup_prompts) or 1
    limits = httpx.Limits(max_connections=cap + 1, max_keepalive_connections=cap + 1)
    gaps = arrival_gaps(len(prompts), request_rate, burstiness, seed, ramp)
    cancel = cancel or asyncio.Event()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(stall_timeout, connect=min(stall_timeout, 30.0), pool=None)  # pool: our own cap waits
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        gate = asyncio.Semaphore(cap)

        async def gated(p: Prompt) -> RequestResult:
            async with gate:
                return await send_completion(client, url, model, p, output_len, count_tokens, extra_body)

        if warmup_prompts:
            for warm in await asyncio.gather(*(gated(p) for p in warmup_prompts)):
                if not warm.success:
                    raise RuntimeError(f"warm-up request failed: {warm.error}")

        async def timed(p: Prompt) -> RequestResult:
            result = await gated(p)
            if on_result:
                on_result(result)
            return result

        start = time.perf_counter()
        tasks: list[asyncio.Task] = []
        stop = asyncio.ensure_future(cancel.wait())
        for p, gap in zip(prompts, gaps):
            if gap:
                await asyncio.wait([stop], timeout=gap)
            if cancel.is_set():
                break
            tasks.append(asyncio.ensure_future(timed(p)))
        pending = set(tasks)
        while pending and not cancel.is_set():
            _, pending = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop)
        for task in pending:
            task.cancel()
        stop.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # let the aborted requests close their streams
        results = []
        for i, p in enumerate(prompts):
            if i >= len(tasks) or tasks[i].cancelled():
                results.append(RequestResult(prompt_tokens=len(p.token_ids), error="cancelled"))
            elif (failed := tasks[i].exception()) is not None:
                results.append(RequestResult(prompt_tokens=len(p.token_ids), error=repr(failed)))
            else:
                results.append(tasks[i].result())
        duration = time.perf_counter() - start
    isl = len(prompts[0].token_ids) if prompts else 0
    return RunResult(concurrency, isl, output_len, duration, results, request_rate, burstiness, seed, cancel.is_set())
