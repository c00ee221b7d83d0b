"""The public figures beside ours carry the conditions their source states, and no others."""

from published import CONDITIONS, PUBLIC, comparison


def test_the_public_column_states_perf_mds_conditions_and_ours_state_our_own():
    table = comparison("smollm2-135m-instruct", 2, ttft_s=0.5, decode_tok_s=10.0, prefill_tok_s=100.0)
    assert table[-1].endswith(f"({CONDITIONS})") and "batch size and prompt length not stated" in CONDITIONS
    rows = {line.split("  ")[0]: line for line in table[2:5]}
    assert set(rows) == {"TTFT (ours: 128-token prompt)", "decode (ours: batch 1)", "prefill (ours: 2048 tokens)"}
    assert "44.2 t/s/u" in rows["decode (ours: batch 1)"] and "67 ms" in rows["TTFT (ours: 128-token prompt)"]


def test_the_figures_are_perf_mds_llama_3_1_8b_rows():
    assert {n: (p.card, p.speed_tok_s_user, p.ttft_ms) for n, p in PUBLIC.items()} == {
        1: ("n150", 28.3, 104), 2: ("n300", 44.2, 67), 8: ("T3K (LoudBox)", 64.3, 53)}
