"""The use cases of the vendors' published table, run against any endpoint, with pass/fail per SLO.

| scenario | use case | concurrency | ISL | OSL | SLO (what decides pass) |
|---|---|---|---|---|---|
| chat | interactive chat | 1, 2, 4 | 1,024 (≤ 2K) | 256 (128–512) | median TTFT < 300 ms |
| rag | RAG / document Q&A | 1 | 4,096 (4K–8K) | 256 | median TTFT < 1 s; prefill tok/s reported |
| long | long-form generation | 1 | 1,024 | 1,024 | stable TPOT: p99/median ITL ≤ 2 (CV reported) |

``scale`` shrinks every length (e.g. 1/8 for a 135M model on a CPU) and the report says so. For
each use case the table also gives the largest concurrency that still meets its SLO, found by
doubling the concurrency until the SLO fails, then bisecting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TTError
from . import client


@dataclass(frozen=True)
class Scenario:
    name: str
    use_case: str
    concurrency: tuple[int, ...]
    input_len: int
    output_len: int
    slo: str  # in words, for the table
    #: The SLO's limit on median TTFT (ms), where it has one: the line on the widget's plot.
    ttft_limit_ms: float | None = None
    #: What the vendor reports for this use case: Llama-3.1-8B-Instruct on a Wormhole LoudBox.
    reported: str = ""

    def judge(self, s: dict[str, Any]) -> tuple[str, bool]:
        """(what was measured, in words; whether it meets the SLO) for a run's summary."""
        ttft = s["median_ttft_ms"]
        if s["completed"] == 0 or ttft is None:
            return f"no request completed ({s['failed']} failed)", False
        if self.name == "chat":
            return f"median TTFT {ttft:.0f} ms, TPOT {s['median_tpot_ms'] or 0:.1f} ms", ttft < (self.ttft_limit_ms or 0)
        if self.name == "rag":
            return (f"median TTFT {ttft:.0f} ms, prefill {s['input_len'] / ttft * 1000:,.0f} tok/s",
                    ttft < (self.ttft_limit_ms or 0))
        ratio, cv = stability(s)
        return f"TPOT {s['median_tpot_ms'] or 0:.1f} ms, p99/median ITL {ratio:.2f}, CV {cv:.2f}", ratio <= 2.0


SCENARIOS = {
    "chat": Scenario("chat", "interactive chat", (1, 2, 4), 1024, 256, "TTFT < 300 ms", 300.0,
                     "TTFT 77–255 ms, TPOT 19–20 ms"),
    "rag": Scenario("rag", "RAG / document Q&A", (1,), 4096, 256, "TTFT < 1 s", 1000.0,
                    "TTFT 489–986 ms, prefill 8,300–8,400 tok/s"),
    "long": Scenario("long", "long-form generation", (1,), 1024, 1024, "stable TPOT (p99/median ITL ≤ 2)", None,
                     "TTFT 78–137 ms, TPOT 19–20 ms, ~20 s for 1,024 tokens"),
}
#: Whose figures ``Scenario.reported`` are.
REPORTED_FOR = "Llama-3.1-8B-Instruct on a Wormhole LoudBox, as the vendor's published table reports it"


def stability(s: dict[str, Any]) -> tuple[float, float]:
    """p99/median ITL and the ITLs' coefficient of variation."""
    median, mean = s["median_itl_ms"], s["mean_itl_ms"]
    if not median or not mean:
        return float("inf"), float("inf")
    return s["p99_itl_ms"] / median, s["std_itl_ms"] / mean


def scaled(length: int, scale: float) -> int:
    return max(1, round(length * scale))


class Bench:
    """Runs against one endpoint with one tokenizer; every run gets fresh prompts (seed + run number)."""

    def __init__(self, base_url: str, model: str, tokenizer, *, seed: int | None = None, num_prompts: int | None = None,
                 request_rate: float = float("inf"), burstiness: float = 1.0, slo_ms: dict | None = None,
                 ramp: tuple[str, float, float] | None = None, api_key: str | None = None,
                 progress: Callable[[str], None] = print, stall_timeout: float = 300.0):
        self.base_url, self.model, self.tokenizer = base_url, model, tokenizer
        self.api_key = api_key  # sent as Authorization: Bearer (vllm bench serve takes OPENAI_API_KEY)
        self.seed = seed if seed is not None else int(time.time())  # a new seed per run: no prefix-cache hits
        self.num_prompts, self.request_rate, self.burstiness, self.slo_ms = num_prompts, request_rate, burstiness, slo_ms
        self.ramp = ramp
        self.stall_timeout = stall_timeout  # a request the server leaves silent this long fails (client.run)
        self.progress = progress
        self.on_result: Callable[[client.RequestResult], None] | None = None  # each finished request (any thread)
        self.runs: list[dict[str, Any]] = []
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the run in flight (its finished requests are kept) and every later one; from any thread."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def _run(self, *args, **kwargs) -> client.RunResult:
        stop = asyncio.Event()

        async def watch():
            while not self._cancelled.is_set():
                await asyncio.sleep(0.05)
            stop.set()

        watcher = asyncio.ensure_future(watch())
        try:
            return await client.run(*args, cancel=stop, on_result=self.on_result, **kwargs)
        finally:
            watcher.cancel()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def run(self, concurrency: int, input_len: int, output_len: int) -> dict[str, Any] | None:
        """One run; None once cancelled."""
        if self.cancelled:
            return None
        n = self.num_prompts or max(4 * concurrency, 8)
        seed = self.seed + len(self.runs) * 1000
        prompts = client.random_prompts(self.tokenizer, n + concurrency, input_len, seed=seed)
        warmup, timed = prompts[:concurrency], prompts[concurrency:]
        self.progress(f"concurrency {concurrency}, ISL {input_len}, OSL {output_len}: {n} requests")
        result = asyncio.run(self._run(
            self.base_url, self.model, timed, output_len, concurrency, self.count_tokens, warmup_prompts=warmup,
            request_rate=self.request_rate, burstiness=self.burstiness, seed=seed, ramp=self.ramp, api_key=self.api_key,
            stall_timeout=self.stall_timeout,
        ))
        summary = result.summary(self.slo_ms)
        self.runs.append(summary)
        return summary

    def scenario(self, scenario: Scenario, scale: float = 1.0, search: bool = False, max_concurrency: int = 64) -> list[dict]:
        """Run a use case at its concurrencies; rows of the recommendation table."""
        isl, osl = scaled(scenario.input_len, scale), scaled(scenario.output_len, scale)
        rows = []
        for c in scenario.concurrency:
            summary = self.run(c, isl, osl)
            if summary is None:
                break
            measured, ok = scenario.judge(summary)
            rows.append(self.row(scenario, c, isl, osl, scale, measured, ok))
        best = max((r["concurrency"] for r in rows if r["pass"]), default=0)
        if search and not self.cancelled:
            best = self.search(scenario, isl, osl, rows, max_concurrency)
        for r in rows:
            r["max_concurrency_meeting_slo"] = best
        return rows

    def search(self, scenario: Scenario, isl: int, osl: int, rows: list[dict], limit: int) -> int:
        """The largest concurrency that meets the SLO: double until it fails, then bisect."""
        tried = {r["concurrency"]: r["pass"] for r in rows}

        def ok(c: int) -> bool:
            if c not in tried:
                summary = self.run(c, isl, osl)
                tried[c] = summary is not None and scenario.judge(summary)[1]
            return tried[c]

        if not ok(1):
            return 0
        good, bad = 1, None
        while bad is None and good < limit:
            c = min(good * 2, limit)
            good, bad = (c, None) if ok(c) else (good, c)
        while bad is not None and bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if ok(mid) else (good, mid)
        return good

    @staticmethod
    def row(scenario: Scenario, c: int, isl: int, osl: int, scale: float, measured: str, ok: bool) -> dict:
        return {"use_case": scenario.use_case, "scenario": scenario.name, "concurrency": c, "input_len": isl,
                "output_len": osl, "scale": scale, "slo": scenario.slo, "measured": measured, "pass": ok}


def format_run(s: dict[str, Any]) -> str:
    """vLLM's result block, for one run."""
    def v(key, fmt=".2f"):
        x = s.get(key)
        return "-" if x is None else format(x, fmt)

    lines = [f"{'=' * 16} Serving Benchmark Result {'=' * 16}",
             f"{'Concurrency / ISL / OSL:':<40}{s['concurrency']} / {s['input_len']} / {s['output_len']}",
             f"{'Successful requests:':<40}{s['completed']}", f"{'Failed requests:':<40}{s['failed']}",
             f"{'Benchmark duration (s):':<40}{v('duration')}",
             f"{'Total input tokens:':<40}{s['total_input_tokens']}", f"{'Total generated tokens:':<40}{s['total_output_tokens']}",
             f"{'Request throughput (req/s):':<40}{v('request_throughput')}",
             f"{'Output token throughput (tok/s):':<40}{v('output_throughput')}",
             f"{'Total Token throughput (tok/s):':<40}{v('total_token_throughput')}"]
    if "request_goodput" in s:
        lines.append(f"{'Request goodput (req/s):':<40}{v('request_goodput')}")
    for name, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                        ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        lines.append(f"{'-' * 15}{title}{'-' * 15}")
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            lines.append(f"{label + ' ' + name.upper() + ' (ms):':<40}{v(stat + '_' + name + '_ms')}")
    errors = sorted({e for e in s["errors"] if e})
    if errors:
        lines.append("Errors: " + "; ".join(errors[:3]))
    return "\n".join(lines + ["=" * 58])


def format_recommendation(rows: list[dict]) -> str:
    """The recommendation as a text table, each column as wide as its widest entry (so that it fits a
    notebook's output without wrapping), the verdict first."""
    table = [("pass", "use case", "conc", "ISL/OSL", "SLO", "measured")]
    table += [("PASS" if r["pass"] else "FAIL", r["use_case"], str(r["concurrency"]), f"{r['input_len']}/{r['output_len']}",
               r["slo"], r["measured"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {2, 3}  # numbers
    out = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
           for row in table]
    best: dict[str, int] = {}
    for r in rows:
        best[r["use_case"]] = r["max_concurrency_meeting_slo"]
    out.append("largest concurrency meeting the SLO: " + ", ".join(f"{k} {v}" for k, v in best.items()))
    scales = {r["scale"] for r in rows if r["scale"] != 1}
    if scales:
        out.append(f"lengths scaled by {', '.join(f'{s:g}' for s in scales)} from the published use cases (--scale)")
    return "\n".join(out)


def bench_tokenizer(name: str):
    """The tokenizer prompts are counted with: an embedded model, a .gguf or a Hugging Face folder/name."""
    try:
        from ..serving.checkpoint import CheckpointError, load_tokenizer
    except ImportError as e:
        raise TTError(f"bench needs a tokenizer library ({e.name}): pip install 'jupyter-tt[serve]'") from e
    try:
        return load_tokenizer(name)
    except CheckpointError as first:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name)
        except Exception:
            raise TTError(f"{first}. Give --tokenizer the served model's tokenizer (a name or path)") from None
