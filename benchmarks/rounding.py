"""How much the torch backend's numbers change with the CPU's kernels: the tolerances of tests/support/greedy.py.

    .venv/bin/python benchmarks/rounding.py        # about 2 minutes

The same model, the same prompts and the same tokens (teacher-forced, so every run computes the same
thing) under kernel settings that stand in for other CPUs on this one:

- ``this CPU``: what torch picks here (AVX2, AVX-512 or AMX code);
- ``AVX2``: ATen, MKL and oneDNN held to AVX2 (where this CPU has AVX-512);
- ``baseline``: ATen's scalar kernels, MKL's SSE4.2 and oneDNN's SSE4.1 code (as `make test-notebooks`'
  second run).

Prints, per weight format (float32, int8), the largest difference of a logit between two settings,
and the largest change in the lead of one of the five best tokens over another: where a greedy pick
leads by less than that, another CPU may pick differently. `tests/support/greedy.py` sets GAP_ERROR above it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from llama_server import cpu_flags  # noqa: E402

SETTINGS = {
    "this CPU": {},
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
#: (question, the tokens read after it): free-form answers of the embedded model, as greedy gives them here.
PATHS = [
    ("Name three colours.", "1. Red: This is the most obvious colour, but it's also the most versatile. Red is a colour that"),
    ("What is the capital of France?", "The capital of France is Paris.<|im_end|>"),
    ("Write a haiku about the sea.", "Waves crash on the shore,\nSalty spray and sunken ships,\nThe sea's endless"),
]
FORMATS = ["float32", "int8"]


def logits(out: Path) -> None:
    """In a child process with one kernel setting: the teacher-forced logits of every path, per format."""
    import torch

    torch.set_num_threads(2)
    from jupyter_tt.serving.backends.torch.runner import TorchModelRunner
    from jupyter_tt.serving.checkpoint import load_checkpoint
    from jupyter_tt.serving.engine import SequenceStep

    checkpoint = load_checkpoint("smollm2-135m-instruct", progress=False)
    tok = checkpoint.tokenizer
    result = {}
    for weights in FORMATS:
        runner = TorchModelRunner(checkpoint, weights=weights, kv_cache_bytes=32 * 2**20)
        for i, (question, answer) in enumerate(PATHS):
            text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
            prompt, tokens = tok.encode(text, add_special_tokens=False), tok.encode(answer, add_special_tokens=False)
            table = list(range(-(-(len(prompt) + len(tokens)) // runner.block_size)))
            with torch.no_grad():
                rows = [runner.step([SequenceStep(tokens=prompt, start_pos=0, block_table=table)])[0].float()]
                for k, t in enumerate(tokens[:-1]):
                    rows.append(runner.step([SequenceStep(tokens=[t], start_pos=len(prompt) + k, block_table=table)])[0].float())
            result[weights, i] = torch.stack(rows)
    torch.save(result, out)


def compare(a, b) -> tuple[float, float]:
    """(largest logit difference, largest change of a top-5 token's lead over another top-5 token)."""
    import torch

    top = a.topk(5, dim=-1).indices
    ga, gb = a.gather(-1, top), b.gather(-1, top)
    lead_a, lead_b = ga[:, :, None] - ga[:, None, :], gb[:, :, None] - gb[:, None, :]
    return float((a - b).abs().max()), float((lead_a - lead_b).abs().max()) if torch.numel(top) else 0.0


def main() -> None:
    import torch

    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8") if f in flags]
    print(f"CPU: {os.cpu_count()} cores, flags: {' '.join(shown)}")
    settings = {n: env for n, env in SETTINGS.items() if n != "AVX2" or "avx512f" in flags}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in settings.items():
            out = Path(tmp) / f"{len(results)}.pt"
            subprocess.run([sys.executable, __file__, "--child", str(out)], env={**os.environ, **env}, check=True)
            results[name] = torch.load(out)
    print(f"\n{'format':<8} {'settings compared':<24} {'max |logit diff|':>17} {'max change of a lead':>21}")
    for weights in FORMATS:
        for x, y in itertools.combinations(results, 2):
            worst = [compare(results[x][weights, i], results[y][weights, i]) for i in range(len(PATHS))]
            print(f"{weights:<8} {x + ' / ' + y:<24} {max(w[0] for w in worst):>17.2e} {max(w[1] for w in worst):>21.2e}")
    print("\nA greedy token leading by less than the last column may be picked differently on another CPU;"
          "\ntests/support/greedy.py's GAP_ERROR (float32 1e-3, int8 0.3) must stay above it.")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        logits(Path(sys.argv[2]))
    else:
        main()
