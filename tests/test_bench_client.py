"""The benchmark client (jupyter_tt.bench.client) against a scripted streaming server with known timings."""

import asyncio
import json
import socket
import threading

import pytest
import tornado.httpserver
import tornado.ioloop
import tornado.web

from jupyter_tt.bench import client
from jupyter_tt.serving.checkpoint import load_tokenizer

FIRST, GAP, TOKENS = 0.30, 0.08, 6  # first chunk after 300 ms, then one every 80 ms


class Scripted(tornado.web.RequestHandler):
    async def post(self):
        body = json.loads(self.request.body)
        mode = body["model"]
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
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ready, loops = threading.Event(), []

    def serve():
        asyncio.set_event_loop(asyncio.new_event_loop())
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/v1/completions", Scripted)]))
        server.listen(port, "127.0.0.1")
        loops.append(tornado.ioloop.IOLoop.current())
        ready.set()
        loops[0].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    loops[0].add_callback(loops[0].stop)
    thread.join(10)


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


def test_random_prompts_have_exactly_the_requested_number_of_tokens():
    tokenizer = load_tokenizer()
    batch = client.random_prompts(tokenizer, 3, 128, seed=1)
    assert [len(tokenizer.encode(p.text, add_special_tokens=False)) for p in batch] == [128, 128, 128]
    assert len({p.text for p in batch}) == 3
    assert [p.text for p in client.random_prompts(tokenizer, 3, 128, seed=1)] == [p.text for p in batch]
