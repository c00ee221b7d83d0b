"""The card test's table: ours beside the public figures (``jupyter_tt.bench.published``, which names each
source, file, commit and date, and the conditions it states)."""

from __future__ import annotations

from jupyter_tt.bench.published import INFERENCE_SERVER, INFERENCE_SERVER_TARGETS, MODEL_TARGETS, MODEL_TARGETS_GATES, Published


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
