"""An engine's start as a checklist (``serving/startup.py``): phases from the engine's own log lines,
failures named with their fix, and the start's bound (``serve(timeout=)``, ``JUPYTER_TT_SERVE_TIMEOUT``).

The log lines are the vendors' own format strings, filled in: vLLM 0.25.1 (``platforms/__init__.py``,
``v1/engine/core.py``, ``v1/core/kv_cache_utils.py``, ``entrypoints/openai/api_server.py``),
vllm-tt-plugin e3fc849 (``worker.py``), tt-metal and tt-umd (``tt_cluster.cpp``, ``cluster.cpp``) and
tt_transformers (``model_config.py``, ``generator_vllm.py``), as tt-cli 1.2.1 reads them."""

from __future__ import annotations

import time

import pytest

from jupyter_tt.errors import TTError
from jupyter_tt.serving.notebook import start_timeout
from jupyter_tt.serving.startup import Checklist, Phase
from tests.support.kernels import run

T3K_START = [
    "INFO 12-07 10:00:00 [__init__.py:237] Platform plugin tt is activated",
    "INFO 12-07 10:00:01 [core.py:115] Initializing a V1 LLM engine (v0.25.1) with config: model='meta-llama/Llama-3.1-8B-Instruct'",
    "INFO 12-07 10:00:02 [tt/worker.py:717] Attempting to open mesh device with grid shape (1, 8)",
    "INFO 12-07 10:00:02 [tt/worker.py:652] Setting fabric config: FabricConfig.FABRIC_1D, reliability mode: FabricReliabilityMode.STRICT_INIT",
    "2026-12-07 10:00:03.012 | info     |          Device | Opening user mode device driver (tt_cluster.cpp:235)",
    "INFO 12-07 10:00:40 [tt/worker.py:731] multidevice with 8 devices and grid (1, 8) is created",
    "2026-12-07 10:00:41 | INFO | models.tt_transformers.tt.model_config:__init__ - Checkpoint directory: /models/Llama-3.1-8B-Instruct",
    "INFO 12-07 10:03:00 [tt/worker.py:511] Getting max_tokens_all_users=131072 for number of blocks in KV cache from generator 'LlamaForCausalLM'.",
    "INFO 12-07 10:03:00 [kv_cache_utils.py:2146] GPU KV cache size: 131,072 tokens",
    "\x1b[32mINFO\x1b[0m 12-07 10:03:01 Capturing decode trace",  # engines colour their logs
    "INFO 12-07 10:09:30 [core.py:346] init engine (profile, create kv cache, warmup model) took 389.71 s (compilation: 380.02 s)",
    "INFO 12-07 10:09:31 [api_server.py:616] Starting vLLM server on http://127.0.0.1:8000",
]


def test_a_cards_start_reads_as_its_phases_in_order_with_what_each_found():
    checklist = Checklist("vllm on T3K")
    changes = [phase for line in T3K_START for phase in checklist.feed(line)]
    assert changes.index(Phase.ENGINE) < changes.index(Phase.DEVICES) < changes.index(Phase.WEIGHTS) \
        < changes.index(Phase.KV_CACHE) < changes.index(Phase.WARMUP) < changes.index(Phase.API)
    rows = {phase: (mark, detail) for mark, phase, detail in checklist.rows()}
    assert rows[Phase.DEVICES][0] == "done" and rows[Phase.DEVICES][1].startswith("8 devices, grid (1, 8)")
    assert rows[Phase.KV_CACHE][1].startswith("131,072 tokens")
    assert rows[Phase.WARMUP][1].startswith("engine ready after 389.71 s")
    assert rows[Phase.API][0] == "now"  # the log says it starts; only an answer says it is up
    checklist.answering()
    assert all(mark == "done" for mark, _, _ in checklist.rows())
    assert "[x] devices: 8 devices, grid (1, 8)" in checklist.text()
    assert checklist.failure() is None


def test_a_phase_not_seen_yet_stays_open_and_a_line_says_where_the_start_is():
    checklist = Checklist("vllm on N300")
    checklist.feed(T3K_START[1])
    checklist.feed(T3K_START[2])
    assert [m for m, _, _ in checklist.rows()] == ["done", "now", "todo", "todo", "todo", "todo"]
    assert checklist.line(Phase.DEVICES) == "vllm on N300: [2/6] devices: started"
    assert "<b>vllm on N300</b>" in checklist.html() and "⏳ devices" in checklist.html()


@pytest.mark.parametrize("lines, name, fix", [
    (["2026-12-07 | critical | Always | TT_THROW: Sysmem mapped at unexpected NOC address (assert.hpp:104)"],
     "CHIP_IN_USE", "`jupyter tt devices` shows who holds each card"),
    (["ValueError: TT-LLama8B and TT-Llama11B do not support max_model_len greater than 32768 on N150 (received 65536). "
      "Set --max_model_len to 32768 or lower in vLLM."], "max_model_len", "engine_args=['--max-model-len', '32768']"),
    (["vllm serve: error: unrecognized arguments: --bogus"], "bad argument", "drop it from engine_args"),
    (["2026-12-07 | critical | Always | TT_THROW: sfpi not found at /x/runtime/sfpi or /opt/tenstorrent/sfpi",
      "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"],
     "sfpi not found", "`jupyter tt doctor` says which"),
    (["Timed out while waiting for active ethernet core to become active again. Try resetting the board."],
     "needs reset", "restart the kernel"),
    (["RuntimeError: Engine core initialization failed. See root cause above."], "EngineCore failed", "see the log"),
])
def test_a_failed_start_is_named_with_its_fix_and_the_line_that_showed_it(lines, name, fix):
    checklist = Checklist("vllm on N150")
    for line in T3K_START[:3] + lines:
        checklist.feed(line)
    failure = checklist.failure("exit status 1")
    assert failure.name == name and fix in failure.fix, failure
    assert failure.evidence and failure.evidence in "\n".join(lines)
    assert name in str(failure) and fix in str(failure)


def test_a_start_that_died_without_a_known_cause_says_so_with_its_last_line():
    checklist = Checklist("vllm")
    checklist.feed(T3K_START[0])
    failure = checklist.failure("KeyError: 'rope_scaling'")
    assert failure.name == "exited" and failure.evidence == "KeyError: 'rope_scaling'"


def test_a_log_line_cannot_write_to_the_terminal_or_the_page():
    checklist = Checklist("vllm")
    checklist.feed("multidevice with 8 devices and grid <script>alert(1)</script>\x1b]0;owned\x07 is created")
    assert "<script>" not in checklist.html() and "\x1b" not in checklist.text()


def test_serve_timeout_is_honoured_both_ways_and_the_environment_sets_the_default(monkeypatch):
    assert start_timeout(None, 3600.0) == 3600.0
    assert start_timeout(30, 3600.0) == 30.0  # shorter than the engine's own bound: once max()ed away
    assert start_timeout(7200, 300.0) == 7200.0
    monkeypatch.setenv("JUPYTER_TT_SERVE_TIMEOUT", "900")
    assert start_timeout(None, 3600.0) == 900.0 and start_timeout(10, 3600.0) == 10.0
    for bad in (0, -1, float("nan"), "soon"):
        with pytest.raises(TTError, match="positive number of seconds"):
            start_timeout(bad, 300.0)


@pytest.mark.usefixtures("kernelspecs")
def test_a_builtin_start_past_its_timeout_fails_then_and_leaves_no_server(monkeypatch):
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    km, client = start_new_kernel(kernel_name="tt-n300")
    try:
        started = time.monotonic()
        _, _, error = run(client, "import jupyter_tt; jupyter_tt.serve(timeout=0.5)", timeout=120)
        assert error is not None and "did not answer within 0.5 s" in error["evalue"], error
        assert time.monotonic() - started < 30
        out, _, _ = run(client, "import jupyter_tt.serving.notebook as n, glob, os; print(len(n._servers))")
        assert out.strip() == "0"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
