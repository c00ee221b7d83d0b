"""Every string that reaches HTML is escaped: hostile text through each repr, widget and report.

Lease fields come from the scheduler's state, model names and error messages from a server, use-case
rows from results files: any of them may hold markup. None may become markup in a notebook's output.
"""

from __future__ import annotations

import subprocess

import pytest

HOSTILE = ['<img src=x onerror="alert(1)">', "'\"><script>alert(2)</script>"]


def assert_inert(markup: str) -> None:
    """No hostile tag or attribute survived as markup (escaped text is fine)."""
    for tag in ("<img", "<script>alert", "onerror=\"alert"):
        assert tag not in markup, markup[:500]


@pytest.mark.parametrize("h", HOSTILE)
def test_a_kernel_lease_shows_hostile_fields_as_text(h):
    from jupyter_tt.kernels.current import KernelLease
    from jupyter_tt.scheduler import LeasedDevice

    lease = KernelLease(id=h, user=h, server=h, kernel_id=h, card_type=h, pid=1, requested_at=0.0, granted_at=0.0,
                        devices=(LeasedDevice(id=0, path=h, bdf=h, card_type=h, chips=2),), notebook=h,
                        simulated=True, active=False, end_reason=h)
    markup = lease._repr_html_()
    assert_inert(markup)
    assert "&lt;" in markup  # the text is there, escaped


@pytest.mark.parametrize("h", HOSTILE)
def test_a_served_models_repr_shows_hostile_names_as_text(h):
    from jupyter_tt.serving.notebook import LLM

    process = subprocess.Popen(["true"])
    process.wait()
    assert_inert(LLM(process, 1, h, h, "/dev/null", "key")._repr_html_())


@pytest.mark.parametrize("h", HOSTILE)
def test_the_chat_widget_shows_hostile_names_messages_and_errors_as_text(h):
    from jupyter_tt.serving.chat import ChatWidget

    chat = ChatWidget("http://127.0.0.1:9/v1", h, system=h)
    chat.messages += [{"role": "user", "content": h}, {"role": "assistant", "content": f"{h}\n[error: {h}]"}]
    chat._render()
    chat._show_stats(0.0, 0.1, 0.3, 3)
    assert_inert(chat.transcript.value)
    assert_inert(chat.stats.value)


@pytest.mark.parametrize("h", HOSTILE)
def test_the_benchmark_widget_shows_hostile_statuses_and_rows_as_text(h):
    from jupyter_tt.bench.scenarios import Bench
    from jupyter_tt.bench.widget import BenchmarkWidget

    widget = BenchmarkWidget("http://127.0.0.1:9/v1", h, tokenizer=object())
    widget._say(h)  # e.g. a server's error message, which may begin with '<'
    assert_inert(widget.status.value)
    widget.bench = Bench("http://127.0.0.1:9/v1", h, object())
    widget.bench.runs = [{"concurrency": h, "completed": h, "median_ttft_ms": 1.5}]
    widget.rows = [{"use_case": h, "scenario": "chat", "concurrency": h, "input_len": h, "output_len": h, "slo": h,
                    "measured": h, "pass": False, "max_concurrency_meeting_slo": h, "scale": 1}]
    widget.measured_on = h  # an endpoint typed into the box
    assert_inert(widget._table())


@pytest.mark.parametrize("h", HOSTILE)
def test_the_html_report_shows_hostile_names_and_errors_as_text(h, tmp_path):
    from jupyter_tt.bench import report

    run = {"concurrency": 1, "input_len": 8, "output_len": 4, "completed": 1, "failed": 1, "input_lens": [8, 8],
           "output_lens": [4, 4], "ttfts": [0.1, None], "e2els": [0.3, None], "errors": ["", h], "itls": [[0.05], []],
           "median_ttft_ms": 100.0}
    page = tmp_path / "report.html"
    report.write_html({h: {"runs": [run]}}, page)
    text = page.read_text()
    assert_inert(text)
    assert text.count("<script>") == 1  # the page's own (legend toggles), nothing else
