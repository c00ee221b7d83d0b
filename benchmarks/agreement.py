"""Does our benchmark client measure what an established one measures? (issue 5)

Our client (``jupyter_tt.bench.client``, what ``jupyter tt bench`` runs) and guidellm take turns
measuring the same local server (ours, on the embedded model) with the same request shape: random
prompts of ``--isl`` tokens, ``--osl`` output tokens, ``--concurrency`` in flight. Both report, per
request, TTFT and TPOT as vLLM defines it ((E2EL - TTFT) / (tokens - 1); guidellm calls it the
request's inter_token_latency_ms). The medians over every round must agree within 10%.

``--target scripted`` measures a stand-in endpoint instead, in its own process, whose timings are
known (first token after ``--ttft-ms``, then one every ``--tpot-ms``, sleeping rather than computing):
there the clients' load cannot slow the server, so it shows whether the two measure the same thing;
against our real server on this 2-core machine, a client's own CPU use also slows what it measures.
(vLLM's own ``vllm bench serve`` cannot run on this CPU: its wheels need AVX-512; aiperf would do too.)

    python3 benchmarks/agreement.py setup     # guidellm in its own venv, .peers/guidellm (about 6 GB: torch)
    .venv/bin/python benchmarks/agreement.py run [--rounds 3] [--requests 10] [--isl 128] [--osl 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDELLM = ROOT / ".peers" / "guidellm"
GUIDELLM_VERSION = "0.8.1"
MODEL = "smollm2-135m-instruct"


def setup() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(GUIDELLM)], check=True)
    subprocess.run([str(GUIDELLM / "bin" / "pip"), "install", "-q", f"guidellm=={GUIDELLM_VERSION}"], check=True)


def scripted_endpoint(port: int, ttft_ms: float, tpot_ms: float) -> None:
    """An OpenAI-style streaming /v1/completions that takes exactly the given times."""
    import tornado.ioloop
    import tornado.web

    class Completions(tornado.web.RequestHandler):
        async def post(self):
            body = json.loads(self.request.body)
            n = int(body.get("max_tokens") or 16)
            self.set_header("Content-Type", "text/event-stream")
            await asyncio.sleep(ttft_ms / 1000)
            for i in range(n):
                if i:
                    await asyncio.sleep(tpot_ms / 1000)
                self.write("data: " + json.dumps({"id": "x", "object": "text_completion", "model": MODEL,
                                                  "choices": [{"index": 0, "text": " w", "finish_reason": None}]}) + "\n\n")
                await self.flush()
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            self.write("data: " + json.dumps({"id": "x", "object": "text_completion", "model": MODEL, "choices": [],
                                              "usage": usage}) + "\n\ndata: [DONE]\n\n")

    class Health(tornado.web.RequestHandler):
        def get(self):
            self.finish("ok")

    tornado.web.Application([(r"/v1/completions", Completions), (r"/health", Health)]).listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours(base: str, tokenizer, n: int, isl: int, osl: int, c: int, seed: int) -> tuple[list[float], list[float]]:
    sys.path.insert(0, str(ROOT))
    from jupyter_tt.bench import client

    prompts = client.random_prompts(tokenizer, n + c, isl, seed=seed)
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    result = asyncio.run(client.run(base, MODEL, prompts[c:], osl, c, count, warmup_prompts=prompts[:c]))
    ok = result.succeeded
    return [r.ttft * 1000 for r in ok], [r.tpot * 1000 for r in ok if r.tpot is not None]


def guidellm(base: str, tokenizer_dir: str, n: int, isl: int, osl: int, c: int, seed: int, out: Path) -> tuple[list[float], list[float]]:
    cmd = [
        str(GUIDELLM / "bin" / "guidellm"), "run",
        "--backend", f"kind=openai_http,target={base},model={MODEL},request_format=/v1/completions",
        "--profile", f"kind=concurrent,streams={c}", "--constraint", f"kind=max_requests,count={n}",
        "--data", f"kind=synthetic_text,prompt_tokens={isl},output_tokens={osl}",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer_dir}", "--seed", f"kind=static,value={seed}",
        "--output", f"kind=json,path={out}", "--disable-console",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=out.parent)
    if done.returncode != 0:
        raise RuntimeError(f"guidellm failed: {done.stderr[-2000:]}")
    requests = json.loads(out.read_text())["benchmarks"][0]["requests"]["successful"]
    return [r["time_to_first_token_ms"] for r in requests], [r["inter_token_latency_ms"] for r in requests if r["output_tokens"] > 1]


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    from jupyter_tt.serving.checkpoint import load_tokenizer

    if not (GUIDELLM / "bin" / "guidellm").exists():
        sys.exit("guidellm is not installed: python3 benchmarks/agreement.py setup")
    tokenizer = load_tokenizer(MODEL)
    work = Path(tempfile.mkdtemp(prefix="agreement-"))
    tokenizer.save_pretrained(work / "tokenizer")  # guidellm loads tokenizers the Hugging Face way
    port = free_port()
    if args.target == "scripted":
        import multiprocessing

        server = multiprocessing.Process(target=scripted_endpoint, args=(port, args.ttft_ms, args.tpot_ms), daemon=True)
        server.start()
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "jupyter"), "tt", "serve", "--port", str(port)]
        env = dict(os.environ)
        if args.pin:  # the server alone on CPU 0 (one thread), the clients on the others
            cmd = ["taskset", "-c", "0", *cmd]
            env |= {"OMP_NUM_THREADS": "1"}
            os.sched_setaffinity(0, set(range(1, os.cpu_count())))
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(120):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        pooled = {"ours": ([], []), "guidellm": ([], [])}
        for i in range(args.rounds):  # interleaved: this machine's slow spells fall on both
            for name in ("ours", "guidellm"):
                if name == "ours":
                    t, p = ours(base, tokenizer, args.requests, args.isl, args.osl, args.concurrency, seed=1000 * i)
                else:
                    t, p = guidellm(base, str(work / "tokenizer"), args.requests, args.isl, args.osl, args.concurrency,
                                    1000 * i + 1, work / f"guidellm-{i}.json")
                pooled[name][0].extend(t)
                pooled[name][1].extend(p)
                print(f"round {i + 1} {name:<9} median TTFT {statistics.median(t):7.1f} ms  TPOT {statistics.median(p):6.1f} ms"
                      f"  ({len(t)} requests)", flush=True)
    finally:
        server.terminate()
    where = (f"a scripted endpoint (TTFT {args.ttft_ms:g} ms, TPOT {args.tpot_ms:g} ms by construction)"
             if args.target == "scripted" else
             f"our server ({MODEL}, torch backend{', alone on CPU 0, 1 thread' if args.pin else ''})")
    print(f"\n{where}: ISL {args.isl}, OSL {args.osl}, concurrency {args.concurrency}, "
          f"{args.rounds} rounds x {args.requests} requests")
    for k, label in ((0, "median TTFT"), (1, "median TPOT")):
        a, b = statistics.median(pooled["ours"][k]), statistics.median(pooled["guidellm"][k])
        diff = abs(a - b) / b
        print(f"{label}: ours {a:.1f} ms, guidellm {b:.1f} ms, difference {diff:.1%} "
              f"(within 10%: {'met' if diff <= 0.10 else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup")
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--requests", type=int, default=10)
    r.add_argument("--isl", type=int, default=128)
    r.add_argument("--osl", type=int, default=32)
    r.add_argument("--concurrency", type=int, default=1)
    r.add_argument("--target", choices=["ours", "scripted"], default="ours")
    r.add_argument("--pin", action="store_true", help="our server alone on CPU 0, the clients on the other CPUs")
    r.add_argument("--ttft-ms", type=float, default=200.0)
    r.add_argument("--tpot-ms", type=float, default=30.0)
    args = ap.parse_args()
    setup() if args.cmd == "setup" else run(args)


if __name__ == "__main__":
    main()
