"""The public figures the card test prints beside ours, each with its source, file, commit and date,
and the conditions that source states (and no others).

1. tt-inference-server ``reference_config/benchmarking/benchmark_targets/model_performance_reference.json``
   (tenstorrent/tt-inference-server 95e5f11b, 2026-08-12; read at 11ac526): Llama-3.1-8B-Instruct,
   concurrency 1, ISL/OSL 128/128, its "theoretical" targets: TTFT and tokens/s per user. These are the
   conditions of our own measurement (batch 1, a 128-token prompt), so the columns compare like with like.
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


#: By chip count (the mesh the card test opens).
INFERENCE_SERVER_TARGETS = {1: Published("n150", 21, 51), 2: Published("n300", 41, 40), 8: Published("T3K (LoudBox)", 73, 29)}
MODEL_TARGETS_GATES = {1: Published("n150", 8.8, 195), 8: Published("T3K (LoudBox)", 64.0, 40)}


def _cell(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:g} {unit}"


def comparison(model: str, chips: int, ttft_s: float, decode_tok_s: float, prefill_tok_s: float) -> list[str]:
    """The card test's table: ours (our conditions in each row) beside each source's (its conditions below)."""
    none = Published(f"{chips} chips", None, None)
    server, gates = INFERENCE_SERVER_TARGETS.get(chips, none), MODEL_TARGETS_GATES.get(chips, none)
    return [
        f"{'':<34} {'ours (' + model + ')':>26} {'[1]':>12} {'[2]':>12}",
        f"{'card':<34} {server.card:>26} {server.card:>12} {gates.card:>12}",
        f"{'TTFT (ours: 128-token prompt)':<34} {ttft_s * 1000:>23.0f} ms {_cell(server.ttft_ms, 'ms'):>12} "
        f"{_cell(gates.ttft_ms, 'ms'):>12}",
        f"{'decode (ours: batch 1)':<34} {decode_tok_s:>19.1f} tok/s/u {_cell(server.tok_s_user, 't/s/u'):>12} "
        f"{_cell(gates.tok_s_user, 't/s/u'):>12}",
        f"{'prefill (ours: 2048 tokens)':<34} {prefill_tok_s:>21.0f} tok/s {'-':>12} {'-':>12}",
        f"[1] {INFERENCE_SERVER}",
        f"[2] {MODEL_TARGETS}",
    ]
