"""How many streaming requests per second the benchmark client sustains on its own (target ≥ 300/s).

A minimal endpoint (tornado, in its own process, so it does not share the client's core) answers
every /v1/completions at once with four streamed chunks and a usage chunk; the client sends
``--requests`` of them at ``--concurrency`` through ``jupyter_tt.bench.client.run``, exactly as a
benchmark does, and the rate it reaches is the most it could measure without becoming the bottleneck.

    .venv/bin/python benchmarks/bench_client.py [--requests 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_tt.bench import client  # noqa: E402

CHUNK = "data: " + json.dumps({"choices": [{"index": 0, "text": " w"}]}) + "\n\n"
USAGE = "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}}) + "\n\n"


def endpoint(port: int) -> None:
    import tornado.ioloop
    import tornado.web

    class Completions(tornado.web.RequestHandler):
        async def post(self):
            self.set_header("Content-Type", "text/event-stream")
            for _ in range(4):
                self.write(CHUNK)
                await self.flush()
            self.write(USAGE + "data: [DONE]\n\n")

    tornado.web.Application([(r"/v1/completions", Completions)]).listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.Process(target=endpoint, args=(port,), daemon=True)
    server.start()
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        prompts = [client.Prompt(text="a b c d", token_ids=[1, 2, 3, 4]) for _ in range(args.requests)]
        warm = prompts[: args.concurrency]
        result = asyncio.run(client.run(f"http://127.0.0.1:{port}", "m", prompts, 4, args.concurrency, len,
                                        warmup_prompts=warm))
        s = result.summary()
        print(f"benchmark client alone: {s['completed']} streaming requests ({s['failed']} failed) at concurrency "
              f"{args.concurrency} in {s['duration']:.2f} s: {s['request_throughput']:.0f} requests/s "
              f"(target >= 300/s: {'met' if s['request_throughput'] >= 300 else 'NOT met'}); "
              f"median TTFT {s['median_ttft_ms']:.2f} ms against an endpoint that answers at once")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
