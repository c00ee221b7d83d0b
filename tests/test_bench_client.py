"""The benchmark client (jupyter_tt.bench.client) against a scripted streaming server with known timings."""

import asyncio
import json
import statistics
import time

import pytest
import tornado.web

from jupyter_tt.bench import client
from jupyter_tt.serving.checkpoint import load_tokenizer
from tests.support.jupyter_servers import app_in_thread

FIRST, GAP, TOKENS = 0.30, 0.08, 6  # first chunk after 300 ms, then one every 80 ms
LOAD_MS = 120  # model "load": the first chunk takes 120 ms per request in flight (itself included)


class Scripted(tornado.web.RequestHandler):
    in_flight = 0

    async def post(self):
        body = json.loads(self.request.body)
        mode = body["model"]
        if mode == "load":
            Scripted.in_flight += 1
            try:
                self.set_header("Content-Type", "text/event-stream")
                await asyncio.sleep(LOAD_MS / 1000 * Scripted.in_flight)
                for i in range(3):
                    await asyncio.sleep(0.02 if i else 0)
                    self.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': ' w'}]})}\n\n")
                    await self.flush()
                self.write("data: [DONE]\n\n")
            finally:
                Scripted.in_flight -= 1
            return
        if mode == "chunked-usage":  # 3 chunks of 2 tokens, usage with each (continuous usage stats)
            self.set_header("Content-Type", "text/event-stream")
            await asyncio.sleep(FIRST)
            for i in range(3):
                if i:
                    await asyncio.sleep(GAP)
                usage = {"prompt_tokens": 4, "completion_tokens": 2 * (i + 1), "total_tokens": 4 + 2 * (i + 1)}
                self.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': ' two words'}], 'usage': usage})}\n\n")
                await self.flush()
            self.write("data: [DONE]\n\n")
            return
        if mode in ("stalls", "cut", "error-event"):  # two tokens, then: silence, a closed stream, an error event
            self.set_header("Content-Type", "text/event-stream")
            for _ in range(2):
                self.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': ' word'}]})}\n\n")
                await self.flush()
            if mode == "stalls":
                await asyncio.sleep(60)
            elif mode == "error-event":
                self.write(f"data: {json.dumps({'error': {'message': 'the engine has been in one step for 130 s'}})}\n\n")
            return
        if mode == "broken":
            self.set_status(400)
            self.finish({"error": {"message": "bad model"}})
            return
        self.set_header("Content-Type", "text/event-stream")
        await asyncio.sleep(FIRST)
        for i in range(TOKENS):
            if i:
                await asyncio.sleep(GAP)
            self.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': ' word'}]})}\n\n")
            await self.flush()
        if mode == "with-usage":
            usage = {"prompt_tokens": 4, "completion_tokens": TOKENS, "total_tokens": TOKENS + 4}
            self.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        self.write("data: [DONE]\n\n")


@pytest.fixture(scope="module")
def scripted():
    with app_in_thread(tornado.web.Application([(r"/v1/completions", Scripted)])) as url:
        yield url


def words(text: str) -> int:
    return len(text.split())


def prompts(n):
    return [client.Prompt(text="a b c d", token_ids=[1, 2, 3, 4]) for _ in range(n)]


def test_ttft_itl_tpot_and_throughput_follow_vllm_definitions(scripted):
    result = asyncio.run(client.run(scripted, "with-usage", prompts(4), 16, concurrency=2, count_tokens=words))
    s = result.summary()
    assert s["completed"] == 4 and s["failed"] == 0
    for r in result.requests:
        assert r.output_tokens == TOKENS  # from the usage chunk
        assert r.ttft == pytest.approx(FIRST, abs=0.06)
        assert len(r.itl) == TOKENS - 1
        assert all(x == pytest.approx(GAP, abs=0.05) for x in r.itl)
        assert r.tpot == pytest.approx((r.latency - r.ttft) / (TOKENS - 1))
    assert s["median_tpot_ms"] == pytest.approx(GAP * 1000, abs=20)
    # two at a time: two waves of one request each
    expected = FIRST + (TOKENS - 1) * GAP
    assert s["duration"] == pytest.approx(2 * expected, abs=0.25)
    assert s["output_throughput"] == pytest.approx(4 * TOKENS / s["duration"])


def test_without_usage_the_output_is_counted_with_the_tokenizer(scripted):
    result = asyncio.run(client.run(scripted, "no-usage", prompts(1), 16, concurrency=1, count_tokens=words))
    assert result.requests[0].output_tokens == TOKENS  # " word" x 6, counted by `words`


def test_failed_requests_are_counted_with_their_error_not_dropped(scripted):
    result = asyncio.run(client.run(scripted, "broken", prompts(3), 16, concurrency=3, count_tokens=words))
    s = result.summary()
    assert s["completed"] == 0 and s["failed"] == 3
    assert "HTTP 400" in s["errors"][0] and "bad model" in s["errors"][0]
    assert s["median_ttft_ms"] is None and s["output_throughput"] == 0


@pytest.mark.parametrize("mode, error", [
    ("stalls", "ReadTimeout: the server sent nothing for 1 s"),
    ("cut", "the server closed the stream before its end ([DONE])"),
    ("error-event", "the server ended the stream with an error: the engine has been in one step for 130 s"),
])
def test_a_stream_that_stops_mid_way_fails_its_request_and_the_run_ends(scripted, mode, error):
    start = time.monotonic()
    result = asyncio.run(client.run(scripted, mode, prompts(2), 16, concurrency=2, count_tokens=words, stall_timeout=1))
    assert time.monotonic() - start < 10
    s = result.summary()
    assert s["completed"] == 0 and s["failed"] == 2 and s["errors"] == [error, error]


def test_random_prompts_have_exactly_the_requested_number_of_tokens():
    tokenizer = load_tokenizer()
    batch = client.random_prompts(tokenizer, 3, 128, seed=1)
    assert [len(tokenizer.encode(p.text, add_special_tokens=False)) for p in batch] == [128, 128, 128]
    assert len({p.text for p in batch}) == 3
    assert [p.text for p in client.random_prompts(tokenizer, 3, 128, seed=1)] == [p.text for p in batch]


def test_the_result_has_vllms_fields_percentiles_and_goodput(scripted):
    import numpy as np

    result = asyncio.run(client.run(scripted, "with-usage", prompts(4), 16, concurrency=4, count_tokens=words, seed=7))
    s = result.summary(slo_ms={"ttft": 1000 * FIRST + 150})
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            assert s[f"{stat}_{name}_ms"] is not None, (stat, name)
    ttfts = [r.ttft * 1000 for r in result.requests]
    assert s["p90_ttft_ms"] == pytest.approx(np.percentile(ttfts, 90))
    assert s["std_ttft_ms"] == pytest.approx(np.std(ttfts))
    assert s["mean_e2el_ms"] == pytest.approx(1000 * (FIRST + (TOKENS - 1) * GAP), abs=60)
    assert s["total_input_tokens"] == 16 and s["total_output_tokens"] == 4 * TOKENS
    assert s["request_throughput"] == pytest.approx(4 / s["duration"])
    assert s["total_token_throughput"] == pytest.approx((16 + 4 * TOKENS) / s["duration"])
    assert s["request_goodput"] == pytest.approx(s["request_throughput"])  # every TTFT within the SLO
    assert result.summary(slo_ms={"ttft": 1000 * FIRST - 100})["request_goodput"] == 0
    assert s["input_lens"] == [4] * 4 and s["output_lens"] == [TOKENS] * 4 and s["errors"] == [""] * 4
    assert len(s["itls"]) == 4 and s["seed"] == 7
    json.dumps(s)  # the result is JSON as it is


def test_per_chunk_usage_shares_a_chunks_gap_among_its_tokens(scripted):
    r = asyncio.run(client.run(scripted, "chunked-usage", prompts(1), 16, concurrency=1, count_tokens=words)).requests[0]
    assert r.output_tokens == 6
    assert len(r.itl) == 5  # one per token after the first
    assert r.itl[0] == 0.0  # the first token's chunk also held the second
    assert all(x == pytest.approx(GAP / 2, abs=0.03) for x in r.itl[1:])
    assert r.tpot == pytest.approx((r.latency - r.ttft) / 5)


def test_open_loop_arrivals_follow_the_rate_and_burstiness():
    gaps = client.arrival_gaps(4000, request_rate=20.0, burstiness=1.0, seed=3)
    assert gaps == client.arrival_gaps(4000, 20.0, 1.0, seed=3)
    assert statistics.fmean(gaps) == pytest.approx(1 / 20, rel=0.05)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.1)  # Poisson: CV 1
    bursty = client.arrival_gaps(4000, request_rate=20.0, burstiness=0.25, seed=3)
    assert statistics.fmean(bursty) == pytest.approx(1 / 20, rel=0.1)
    assert statistics.pstdev(bursty) / statistics.fmean(bursty) == pytest.approx(2.0, rel=0.15)  # CV 1/sqrt(b)
    assert client.arrival_gaps(3, float("inf"), 1.0, seed=0) == [0.0, 0.0, 0.0]


def test_a_rate_spreads_the_requests_out(scripted):
    gaps = client.arrival_gaps(5, 4.0, 1.0, seed=11)
    result = asyncio.run(client.run(scripted, "with-usage", prompts(5), 16, None, words, request_rate=4.0, seed=11))
    assert result.summary()["completed"] == 5
    last_sent = sum(gaps)
    assert result.duration == pytest.approx(last_sent + FIRST + (TOKENS - 1) * GAP, abs=0.3)


def test_cancel_stops_the_run_and_counts_what_did_not_finish(scripted):
    async def cancelled_run():
        stop = asyncio.Event()
        done = []
        task = asyncio.ensure_future(client.run(scripted, "with-usage", prompts(6), 16, 2, words, cancel=stop,
                                                on_result=done.append))
        await asyncio.sleep(FIRST + (TOKENS - 1) * GAP + 0.25)  # the first two have finished, two are in flight
        stop.set()
        return await asyncio.wait_for(task, 5), done

    result, done = asyncio.run(cancelled_run())
    s = result.summary()
    assert result.cancelled and s["cancelled"]
    assert s["completed"] == 2 and len(done) == 2
    assert s["failed"] == 4 and s["errors"].count("cancelled") == 4


def test_bench_scenario_finds_the_largest_concurrency_that_meets_the_slo(scripted, tmp_path):
    """`jupyter tt bench --scenario chat --search` on a server whose TTFT grows 120 ms per request in
    flight: 1 and 2 meet TTFT < 300 ms, 3 and 4 do not, so the answer is 2."""
    import subprocess
    import sys

    out = tmp_path / "chat.json"
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_tt.cli", "bench", "--base-url", scripted, "--model", "load", "--tokenizer",
         "smollm2-135m-instruct", "--scenario", "chat", "--scale", "0.01", "--search", "--output", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    rows = result["recommendation"]
    assert [(r["concurrency"], r["pass"]) for r in rows] == [(1, True), (2, True), (4, False)]
    assert {r["max_concurrency_meeting_slo"] for r in rows} == {2}
    assert sorted(r["concurrency"] for r in result["runs"]) == [1, 2, 3, 4]  # the search tried 3
    assert rows[0]["input_len"] == 10 and rows[0]["output_len"] == 3  # 1024 and 256, scaled by 0.01
    assert "largest concurrency meeting the SLO: interactive chat 2" in done.stdout
    assert "lengths scaled by 0.01" in done.stdout


def test_bench_one_run_writes_vllms_fields_at_the_top(scripted, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_tt.cli", "bench", "--base-url", scripted + "/v1", "--model", "with-usage",
         "--tokenizer", "smollm2-135m-instruct", "--input-len", "16", "--output-len", "6", "--concurrency", "2",
         "--num-prompts", "4", "--goodput", "ttft:1000", "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["completed"] == 4 and result["failed"] == 0 and result["input_lens"] == [16] * 4
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert "Serving Benchmark Result" in done.stdout and "Median TTFT (ms)" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "bench", "--base-url", scripted, "--goodput", "ttft=3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--goodput takes ttft:MS" in bad.stderr and "Traceback" not in bad.stderr


def test_reports_csv_plots_and_a_comparison_of_saved_runs(scripted, tmp_path):
    import csv
    import subprocess
    import sys

    def bench(name, *extra):
        done = subprocess.run(
            [sys.executable, "-m", "jupyter_tt.cli", "bench", "--base-url", scripted, "--model", "with-usage",
             "--tokenizer", "smollm2-135m-instruct", "--input-len", "16", "--output-len", "6", "--num-prompts", "4",
             "--output", str(tmp_path / f"{name}.json"), *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    bench("one", "--concurrency", "1,2", "--csv", str(tmp_path / "one.csv"), "--plots", str(tmp_path / "plots"))
    bench("two", "--concurrency", "4")
    rows = list(csv.DictReader((tmp_path / "one.csv").open()))
    assert [r["concurrency"] for r in rows] == ["1", "2"] and all(r["completed"] == "4" for r in rows)
    requests = list(csv.DictReader((tmp_path / "one.requests.csv").open()))
    assert len(requests) == 8 and float(requests[0]["ttft_s"]) == pytest.approx(FIRST, abs=0.1)
    for png in ("latency_vs_concurrency.png", "requests.png", "cdf.png"):
        data = (tmp_path / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png

    done = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "bench", "--compare", str(tmp_path / "one.json"),
                           str(tmp_path / "two.json"), "--plots", str(tmp_path / "compared")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert "one#0 c=1 16/6" in header and "one#1 c=2 16/6" in header and "two" in header
    ttft = next(line for line in lines if line.startswith("median_ttft_ms")).split()[1:]
    assert len(ttft) == 3 and all(float(x) == pytest.approx(FIRST * 1000, abs=100) for x in ttft)
    assert (tmp_path / "compared" / "cdf.png").exists()
    page = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "bench", "--compare", str(tmp_path / "one.json"),
                           str(tmp_path / "two.json"), "--html", str(page)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import re
    import xml.etree.ElementTree as ET

    svgs = [ET.fromstring(x) for x in re.findall(r"<svg.*?</svg>", page.read_text(), re.S)]  # well-formed charts
    assert len(svgs) == 5
    circles = lambda svg: svg.findall(".//circle")  # noqa: E731
    assert len(circles(svgs[2])) == 8 + 4  # the scatter: every request of both files
    assert "TTFT" in circles(svgs[2])[0].find("title").text  # its tooltip
    assert {g.get("data-name") for g in svgs[0].findall("g")} == {"one", "two"} and "legend" in page.read_text()
    missing = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "bench", "--compare", str(tmp_path / "nope.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read a benchmark result" in missing.stderr


def test_the_benchmark_widget_runs_shows_results_exports_and_cancels(scripted, tmp_path):
    import jupyter_tt

    tokenizer = load_tokenizer()
    w = jupyter_tt.BenchmarkWidget(scripted, "load", tokenizer=tokenizer, scenario="chat", scale=0.01,
                                   export_dir=str(tmp_path))
    assert w.run_button.disabled is False and w.json_button.disabled
    thread = w.run()
    assert w.run_button.disabled and not w.cancel_button.disabled
    thread.join(120)
    assert w.progress.value == w.progress.max == 8 + 8 + 16  # 4 x concurrency, at least 8, at 1, 2, 4
    # At the end: median TTFT and TPOT at each concurrency, with the use case's SLO as a line.
    assert w.plot.value.count("<circle") == 6 and "median TTFT and TPOT by concurrency" in w.plot.value
    assert "interactive chat: TTFT &lt; 300 ms" in w.plot.value and "stroke-dasharray" in w.plot.value
    assert "median_ttft_ms" in w.results.value and "interactive chat" in w.results.value
    assert w.results.value.count("PASS") == 2 and w.results.value.count("FAIL") == 1  # 120 ms per request in flight
    assert "largest concurrency meeting the SLO: interactive chat 2" in w.results.value
    assert "lengths scaled by 0.01" in w.results.value
    assert w.status.value == "<small>done</small>" and not w.run_button.disabled and w.cancel_button.disabled
    saved = json.loads(w.export("json").read_text())
    assert [r["concurrency"] for r in saved["runs"]] == [1, 2, 4] and len(saved["recommendation"]) == 3
    assert w.export("csv").read_text().startswith("concurrency,")
    assert saved["measured_on"] == f"the endpoint {scripted} (what it runs on is not known here)"

    w.scenario.value, w.concurrency.value, w.num_prompts.value = "custom sweep", "1,2", 6
    w.model.value = "with-usage"
    thread = w.run()
    while w.progress.value < 2:
        thread.join(0.05)
    w.cancel()
    thread.join(30)
    assert not thread.is_alive() and w.status.value == "<small>cancelled</small>"
    assert len(w.bench.runs) == 1 and w.bench.runs[0]["cancelled"]  # the second run never started
    assert w.bench.runs[0]["completed"] >= 2 and "cancelled" in w.bench.runs[0]["errors"]


def test_a_ramp_raises_the_rate_from_start_to_end():
    n = 3001
    linear_rates = [2.0 + 48.0 * i / (n - 1) for i in range(n)]
    exp_rates = [2.0 * 25.0 ** (i / (n - 1)) for i in range(n)]
    mean_gap = lambda rates, part: statistics.fmean(1 / r for r in rates[part])  # noqa: E731
    linear = client.arrival_gaps(n, float("inf"), 1.0, seed=5, ramp=("linear", 2.0, 50.0))
    exp = client.arrival_gaps(n, float("inf"), 1.0, seed=5, ramp=("exponential", 2.0, 50.0))
    for gaps, rates in ((linear, linear_rates), (exp, exp_rates)):
        for part in (slice(0, 500), slice(1250, 1750), slice(n - 500, n)):
            assert statistics.fmean(gaps[part]) == pytest.approx(mean_gap(rates, part), rel=0.15), part
    assert statistics.fmean(linear[:500]) > 5 * statistics.fmean(linear[-500:])  # it does speed up
    with pytest.raises(ValueError, match="linear or exponential"):
        client.arrival_gaps(3, 1.0, 1.0, seed=0, ramp=("sideways", 1.0, 2.0))


def test_the_benchmark_widget_shows_the_lengths_and_concurrencies_it_runs(scripted):
    import jupyter_tt

    w = jupyter_tt.BenchmarkWidget(scripted, "load", tokenizer=load_tokenizer(), scenario="chat", scale=1 / 16,
                                   num_prompts=1)
    # A use case runs its own lengths: the sweep's fields are hidden and the plan says what will run.
    assert [f.layout.display for f in (w.concurrency, w.input_len, w.output_len)] == ["none"] * 3
    assert w.planned_runs() == [("interactive chat", c, 64, 16) for c in (1, 2, 4)]
    assert "interactive chat: concurrency 1, 2, 4; ISL 64, OSL 16 (the use case&#x27;s 1,024/256 × 0.0625); " \
           "SLO TTFT &lt; 300 ms" in w.plan.value
    w.run().join(120)
    assert [(r["concurrency"], r["input_len"], r["output_len"]) for r in w.bench.runs] == \
           [(c, isl, osl) for _, c, isl, osl in w.planned_runs()]
    # Beside each verdict, what the vendor reports for the use case, and whose figures they are.
    assert "TTFT 77–255 ms, TPOT 19–20 ms" in w.results.value and "Wormhole LoudBox" in w.results.value
    assert "Measured on the endpoint" in w.results.value

    w.scenario.value, w.concurrency.value, w.input_len.value, w.output_len.value = "custom sweep", "1,3", 20, 5
    assert [f.layout.display for f in (w.concurrency, w.input_len, w.output_len)] == [None] * 3
    assert w.scale.layout.display == "none"
    assert w.planned_runs() == [("custom sweep", 1, 20, 5), ("custom sweep", 3, 20, 5)]
    assert "custom sweep: concurrency 1, 3; ISL 20, OSL 5" in w.plan.value
    w.run().join(120)
    assert [(r["concurrency"], r["input_len"], r["output_len"]) for r in w.bench.runs] == [(1, 20, 5), (3, 20, 5)]


def test_the_slos_the_notebook_and_the_docs_quote_are_the_code_s():
    from pathlib import Path

    from jupyter_tt.bench.scenarios import SCENARIOS

    root = Path(__file__).resolve().parent.parent
    texts = {"notebook 03": json.dumps(json.loads((root / "notebooks/03-benchmark.ipynb").read_text())["cells"][0]["source"]),
             "docs/user/benchmarking.md": (root / "docs/user/benchmarking.md").read_text()}
    for where, text in texts.items():
        for name in ("chat", "rag"):
            assert SCENARIOS[name].slo in text, f"{where} does not quote {name}'s {SCENARIOS[name].slo}"
        assert "≤ 200 ms" not in text and "≤ 500 ms" not in text, where
