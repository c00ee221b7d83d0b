"""The first request's TTFT beside the next ones', with and without the engine's warm-up (issue 40).

    .venv/bin/python benchmarks/first_request.py [--rounds 3] [--backend torch]

``jupyter tt serve`` runs ``Engine.warm_up()`` (one short greedy request) before it answers /health. Each
round builds a fresh engine on the embedded model twice, in turn: one served cold, one warmed up first; in
each it times three greedy requests (40 prompt tokens twice, then 33) from submission to the first token.
Prints the medians and the first request's ratio to the second. On this CPU only.
"""

from __future__ import annotations

import argparse
import statistics
import time

from jupyter_tt.serving.engine.sampling import SamplingParams
from jupyter_tt.serving.server import build_engine


def ttft(engine, prompt_tokens: int) -> float:
    """Seconds from submitting a request to its first token, the engine stepped in this thread."""
    started, first, done = time.perf_counter(), [], []

    def on_output(out) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        if out.finished:
            done.append(out)

    engine.add_request(list(range(5, 5 + prompt_tokens)), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
                       on_output)
    while not done:
        engine.step()
    return first[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float, float]]] = {"cold": [], "warmed up": []}
    for _ in range(args.rounds):
        for kind in times:
            engine, _ = build_engine(backend=args.backend, progress=False, kv_cache_mb=64)
            if kind == "warmed up":
                engine.warm_up()
            times[kind].append((ttft(engine, 40), ttft(engine, 40), ttft(engine, 33)))
    print(f"{args.backend} backend, embedded model, medians of {args.rounds} rounds (TTFT, s):")
    for kind, rounds in times.items():
        first, second, third = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(f"  {kind:<9}  first {first:.3f}  second {second:.3f}  third {third:.3f}  first/second {first / second:.2f}x")


if __name__ == "__main__":
    main()
