"""Public figures for Llama-3.1-8B-Instruct on Wormhole, each with its source, file, commit and date, and the
conditions that source states (and no others). The benchmark widget sets a run beside the figures of the
device its kernel's lease stands for; the card test (``tests_ttnn``) prints ours beside them.

1. tt-inference-server ``reference_config/benchmarking/benchmark_targets/model_performance_reference.json``
   (tenstorrent/tt-inference-server 95e5f11b, 2026-08-12; read at 11ac526): Llama-3.1-8B-Instruct,
   concurrency 1, ISL/OSL 128/128, its "theoretical" targets: TTFT and tokens/s per user.
2. tt-metal ``models/model_targets.yaml`` (tenstorrent/tt-metal 0008cdce; the CI gates that replaced
   tt_transformers' deprecated PERF.md): llama3.1-8b, batch 32, sequence length 712,
   ``decode_t/s/u`` and ``prefill_time_to_first_token`` (ms). It lists no n300 row.
"""

from __future__ import annotations

from dataclasses import dataclass

INFERENCE_SERVER = ("tt-inference-server model_performance_reference.json (95e5f11b, 2026-08-12), "
                    "Llama-3.1-8B-Instruct, concurrency 1, ISL/OSL 128/128, theoretical")
MODEL_TARGETS = "tt-metal models/model_targets.yaml (0008cdce), llama3.1-8b, batch 32, seq_len 712"


@dataclass(frozen=True)
class Published:
    card: str
    tok_s_user: float | None
    ttft_ms: float | None


#: By chip count (the mesh a lease opens: an n150 1, an n300 2, a LoudBox 8).
INFERENCE_SERVER_TARGETS = {1: Published("n150", 21, 51), 2: Published("n300", 41, 40), 8: Published("T3K (LoudBox)", 73, 29)}
MODEL_TARGETS_GATES = {1: Published("n150", 8.8, 195), 8: Published("T3K (LoudBox)", 64.0, 40)}


def reference_for(chips: int) -> str | None:
    """The figures for the device of ``chips`` chips, in words with their source and conditions; None where
    no source gives that device."""
    target = INFERENCE_SERVER_TARGETS.get(chips)
    if target is None:
        return None
    return (f"{target.card}: TTFT {target.ttft_ms:g} ms, {target.tok_s_user:g} tok/s per user, at concurrency 1 and "
            f"ISL/OSL 128/128 ({INFERENCE_SERVER})")
