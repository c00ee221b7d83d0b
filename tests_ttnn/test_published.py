"""The public figures beside ours carry their sources' own conditions, and no others."""

from jupyter_tt.bench.published import INFERENCE_SERVER, INFERENCE_SERVER_TARGETS, MODEL_TARGETS, MODEL_TARGETS_GATES
from published import comparison


def test_each_public_column_names_its_source_and_conditions_and_ours_state_our_own():
    table = comparison("smollm2-135m-instruct", 2, ttft_s=0.5, decode_tok_s=10.0, prefill_tok_s=100.0)
    assert table[-2:] == [f"[1] {INFERENCE_SERVER}", f"[2] {MODEL_TARGETS}"]
    assert "concurrency 1, ISL/OSL 128/128" in INFERENCE_SERVER and "batch 32, seq_len 712" in MODEL_TARGETS
    rows = {line.split("  ")[0]: line for line in table[2:5]}
    assert set(rows) == {"TTFT (ours: 128-token prompt)", "decode (ours: batch 1)", "prefill (ours: 2048 tokens)"}
    assert "41 t/s/u" in rows["decode (ours: batch 1)"] and "40 ms" in rows["TTFT (ours: 128-token prompt)"]
    assert rows["decode (ours: batch 1)"].endswith("-")  # model_targets.yaml has no n300 row: nothing invented


def test_the_figures_are_the_sources_llama_3_1_8b_entries():
    assert {n: (p.card, p.tok_s_user, p.ttft_ms) for n, p in INFERENCE_SERVER_TARGETS.items()} == {
        1: ("n150", 21, 51), 2: ("n300", 41, 40), 8: ("T3K (LoudBox)", 73, 29)}
    assert {n: (p.tok_s_user, p.ttft_ms) for n, p in MODEL_TARGETS_GATES.items()} == {1: (8.8, 195), 8: (64.0, 40)}
