"""The torch backend on a crowded CPU: torch's fixed thread team against the runner's adaptive count, side by side.

    python benchmarks/contention.py [--rounds 2] [--num-prompts 8]

Two ``jupyter tt serve --backend torch`` servers (int8, the embedded model) start and idle:
``fixed`` keeps a thread per core (``OMP_NUM_THREADS`` set, torch's team as before), ``adaptive``
lets ``CpuThreads`` choose between steps. Each workload then runs on each server in turn, on a
quiet machine and beside a busy loop per core (normal priority), in interleaved rounds (A B, then
B A). Prints median TTFT and TPOT (ms) and output tokens/s per case, and adaptive / fixed ratios
(TPOT below 1 is better for adaptive).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jupyter_core.paths import jupyter_runtime_dir  # noqa: E402
from serving import stop, wait_ready  # noqa: E402

from jupyter_tt.bench import client  # noqa: E402
from jupyter_tt.serving.checkpoint import load_tokenizer  # noqa: E402
from llama_server import cpu_flags  # noqa: E402

WORKLOADS = [(64, 16, 1), (64, 16, 4)]  # ISL, OSL, concurrency: the workshop notebook's chat case, scaled 1/16
NAME = "smollm2-135m-instruct"


def busy() -> None:
    while True:
        pass


def start(system: str, port: int, log_dir: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if system == "fixed":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    log = open(log_dir / f"{system}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_tt.cli", "serve", "--backend", "torch", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", proc, timeout=300)
    return proc


def measure(port: int, tokenizer, isl: int, osl: int, c: int, n: int, seed: int) -> dict:
    prompts = client.random_prompts(tokenizer, n + c, isl, seed=seed)
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    result = asyncio.run(client.run(f"http://127.0.0.1:{port}", NAME, prompts[c:], osl, c, count, warmup_prompts=prompts[:c]))
    return result.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=8)
    args = parser.parse_args()
    tokenizer = load_tokenizer()
    ports = {"fixed": 8141, "adaptive": 8142}
    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="contention-", dir=runtime))  # private (0700), never /tmp
    procs = {s: start(s, p, log_dir) for s, p in ports.items()}
    results: dict[tuple, list[dict]] = {}
    try:
        for load in ("quiet", "busy loop per core"):
            loaders = [multiprocessing.Process(target=busy, daemon=True) for _ in range(os.cpu_count() or 1)] if load != "quiet" else []
            for p in loaders:
                p.start()
            try:
                for r in range(args.rounds):
                    order = list(ports) if r % 2 == 0 else list(reversed(ports))
                    for isl, osl, c in WORKLOADS:
                        for system in order:
                            s = measure(ports[system], tokenizer, isl, osl, c, args.num_prompts, seed=1000 * r + c)
                            results.setdefault((load, isl, osl, c, system), []).append(s)
            finally:
                for p in loaders:
                    p.kill()
    finally:
        for proc in procs.values():
            stop(proc)

    def med(key: tuple, metric: str) -> float:
        return statistics.median(s[metric] for s in results[key] if s[metric] is not None)

    print(f"torch backend (int8, the embedded model), {os.cpu_count()} cores ({', '.join(sorted(cpu_flags() & {'avx2', 'avx512f', 'amx_tile'}))}), "
          f"{args.rounds} interleaved rounds, {time.strftime('%Y-%m-%d')}")
    print(f"{'load':<20} {'ISL/OSL c':<11} {'fixed TTFT/TPOT/tok/s':>24} {'adaptive TTFT/TPOT/tok/s':>26} {'TPOT ratio':>11} {'tok/s ratio':>12}")
    for load in ("quiet", "busy loop per core"):
        for isl, osl, c in WORKLOADS:
            row = {}
            for system in ports:
                key = (load, isl, osl, c, system)
                row[system] = (med(key, "median_ttft_ms"), med(key, "median_tpot_ms"), med(key, "output_throughput"))
            f, a = row["fixed"], row["adaptive"]
            print(f"{load:<20} {f'{isl}/{osl} {c}':<11} {f'{f[0]:.0f} / {f[1]:.1f} / {f[2]:.1f}':>24} {f'{a[0]:.0f} / {a[1]:.1f} / {a[2]:.1f}':>26} "
                  f"{a[1] / f[1]:>11.2f} {a[2] / f[2]:>12.2f}")
    failed = sum(s["failed"] for runs in results.values() for s in runs)
    print(f"failed requests: {failed}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
