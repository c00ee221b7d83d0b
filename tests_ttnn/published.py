"""The public figures the card test prints beside ours, labelled as their source states them.

Source: tt-metal's ``models/tt_transformers/PERF.md`` (deprecated there for ``model_targets.yaml``),
its "Performance" table, rows Llama3.1-8B. It says the figures were collected with
``demo/simple_text_demo.py`` for at most 200 decode iterations, with bfp4 MLP weights (bfp8 in the
32nd decoder layer) and bfp8 attention weights. It does not state the batch size or the prompt
length, so the table never puts them under a heading that does.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "tt-metal tt_transformers PERF.md, Performance table, Llama3.1-8B"
CONDITIONS = ("simple_text_demo.py, ≤ 200 decode iterations, bfp4 MLP / bfp8 attention; "
              "batch size and prompt length not stated")


@dataclass(frozen=True)
class Published:
    card: str
    speed_tok_s_user: float  # PERF.md's "Speed (t/s/u)"
    ttft_ms: float  # PERF.md's "TTFT (ms)"


#: By chip count (the mesh the card test opens).
PUBLIC = {1: Published("n150", 28.3, 104), 2: Published("n300", 44.2, 67), 8: Published("T3K (LoudBox)", 64.3, 53)}


def comparison(model: str, chips: int, ttft_s: float, decode_tok_s: float, prefill_tok_s: float) -> list[str]:
    """The card test's table: ours (its own conditions in each row) beside PERF.md's (its conditions below)."""
    public = PUBLIC.get(chips, Published(f"{chips} chips", float("nan"), float("nan")))
    return [
        f"{'':<34} {'ours (' + model + ')':>30} {'PERF.md':>14}",
        f"{'card':<34} {public.card:>30} {public.card:>14}",
        f"{'TTFT (ours: 128-token prompt)':<34} {ttft_s * 1000:>27.0f} ms {public.ttft_ms:>11.0f} ms",
        f"{'decode (ours: batch 1)':<34} {decode_tok_s:>22.1f} tok/s/u {public.speed_tok_s_user:>7.1f} t/s/u",
        f"{'prefill (ours: 2048 tokens)':<34} {prefill_tok_s:>24.0f} tok/s {'-':>14}",
        f"PERF.md: {SOURCE} ({CONDITIONS})",
    ]
