"""The transformers peer of benchmarks/serving.py: ``generate`` in-process, float32, batch 1.

Runs in its own venv (.peers/transformers): ``python transformers_peer.py JOB.json RESULT.json``.
The job holds the prompts as token ids; times are taken by a streamer at each new token, with the
metric definitions of jupyter_tt.bench.client (TTFT to the first token, TPOT over the rest).
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


class Clock:
    """A streamer that records when each batch of new tokens arrives (the prompt comes first)."""

    def __init__(self):
        self.times = []
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def generate(model, ids, osl):
    clock = Clock()
    start = time.perf_counter()
    out = model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=osl,
        min_new_tokens=osl, do_sample=False, streamer=clock, pad_token_id=0,
    )
    end = time.perf_counter()
    n = out.shape[1] - len(ids)
    ttft = clock.times[0] - start
    return ttft, (end - start - ttft) / (n - 1) if n > 1 else None, n, end - start


def main():
    job = json.loads(Path(sys.argv[1]).read_text())
    gguf = Path(job["gguf"])
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    results = []
    for w in job["workloads"]:
        for ids in w["warmup"]:
            generate(model, ids, w["output_len"])
        ttfts, tpots, tokens, t0 = [], [], 0, time.perf_counter()
        for ids in w["timed"]:
            ttft, tpot, n, _ = generate(model, ids, w["output_len"])
            ttfts.append(ttft * 1000)
            tokens += n
            if tpot is not None:
                tpots.append(tpot * 1000)
        duration = time.perf_counter() - t0
        results.append({
            "concurrency": 1, "input_len": w["input_len"], "output_len": w["output_len"], "completed": len(ttfts),
            "failed": 0, "errors": [], "duration": duration, "total_output_tokens": tokens,
            "output_throughput": tokens / duration, "median_ttft_ms": statistics.median(ttfts),
            "median_tpot_ms": statistics.median(tpots) if tpots else None,
            "mean_ttft_ms": statistics.fmean(ttfts), "mean_tpot_ms": statistics.fmean(tpots) if tpots else None,
        })
    Path(sys.argv[2]).write_text(json.dumps({"workloads": results}))


if __name__ == "__main__":
    main()
