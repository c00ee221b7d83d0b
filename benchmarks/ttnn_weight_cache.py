"""A start of the ttnn backend with its converted weights cached, beside one without (issue 36).

    .venv-ttnn/bin/python benchmarks/ttnn_weight_cache.py [--rounds 3] [--model smollm2-135m-instruct]

On the golden stand-in (ttnn's golden functions on this CPU; ``make test-ttnn``'s venv, mock cluster
mode: NOT a card). Each round times ``TtnnModelRunner(...)`` (conversion onto the mesh) three ways, in
turn: no cache; a first start into an empty cache (converts and writes every tensor); a second start
(loads them with ``ttnn.as_tensor``). Prints the medians and the ratios; reading the checkpoint is the
same in all three and is not timed. On a card the conversion packs block floats and copies to the
device as well: ``make test-wormhole`` there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests_ttnn"))
import conftest  # noqa: E402,F401  (ttnn's mock cluster, set before ttnn first builds one)
from test_golden import golden_runner  # noqa: E402

from jupyter_tt.caches import Caches  # noqa: E402
from jupyter_tt.serving.checkpoint import load_checkpoint  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    runner = fn()
    took = time.perf_counter() - started
    runner.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model, progress=False)
    plain, cold, warm = [], [], []
    with tempfile.TemporaryDirectory(dir=Path.home()) as work:
        for r in range(args.rounds):
            caches = Caches(Path(work) / f"round{r}")
            plain.append(timed(lambda: golden_runner(checkpoint, max_seq_len=256)[0]))
            cold.append(timed(lambda caches=caches: golden_runner(checkpoint, max_seq_len=256, caches=caches)[0]))
            warm.append(timed(lambda caches=caches: golden_runner(checkpoint, max_seq_len=256, caches=caches)[0]))
            print(f"round {r + 1}: no cache {plain[-1]:.2f} s, first start {cold[-1]:.2f} s, second start {warm[-1]:.2f} s",
                  flush=True)
    p, c, w = (statistics.median(x) for x in (plain, cold, warm))
    print(f"\n{args.model} on the golden stand-in (NOT a card), median of {args.rounds} rounds, interleaved:")
    print(f"  {'no cache':<24} {p:7.2f} s")
    print(f"  {'first start (writes)':<24} {c:7.2f} s  ({c / p:.2f}x no cache)")
    print(f"  {'second start (loads)':<24} {w:7.2f} s  ({w / p:.2f}x no cache; {c / w:.1f}x faster than the first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
