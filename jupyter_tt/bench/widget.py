"""``jupyter_tt.BenchmarkWidget``: ``jupyter tt bench`` in a notebook.

Pick an endpoint (by default the model this notebook serves with ``jupyter_tt.serve()``), a use
case or a custom sweep, and Run: a progress bar and a live plot of each request's TTFT follow the
run, then the results table and the recommendation appear, with JSON and CSV export. Cancel stops
the run and keeps what finished. The benchmark runs in a thread, so the kernel stays responsive;
``run()`` returns that thread, so code (and tests) can wait for it.
"""

from __future__ import annotations

import html
import json
import threading
import time
from pathlib import Path

import httpx
import ipywidgets as widgets

from ..errors import TTError
from . import report
from .scenarios import SCENARIOS, Bench

CUSTOM = "custom sweep"


def _served() -> tuple[str, str, str | None]:
    """The endpoint, model and key of the newest model this kernel serves, else the default local server."""
    from ..serving.notebook import newest_server

    llm = newest_server()
    if llm is not None:
        try:
            name = llm.served_name  # what the engine calls it (llama.cpp and vLLM answer to that name only)
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            name = llm.model
        return llm.base_url, name, llm.api_key
    return "http://127.0.0.1:8000/v1", "smollm2-135m-instruct", None


class BenchmarkWidget(widgets.VBox):
    """``jupyter tt bench`` in a notebook: the vendors' use cases (or a sweep of your own) against an endpoint.

    ``base_url``, ``model``: the endpoint and the model name it serves (default: the model this kernel
    serves with ``jupyter_tt.serve()``, with its key; else http://127.0.0.1:8000/v1). ``scenario``: "chat",
    "rag", "long", "all" or "custom sweep"; ``scale`` shrinks a use case's lengths (1/16 for a small model
    on a CPU). ``concurrency``, ``input_len``, ``output_len``: the custom sweep's, shown only for it (a use
    case runs its own, which the form shows). ``num_prompts``: requests per run (default 4× the
    concurrency, at least 8). ``run()`` starts it in a thread and returns the thread; ``rows`` then holds
    the recommendation, ``bench.runs`` each run's ``vllm bench serve`` fields; Export writes JSON or CSV
    to ``export_dir``.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, *, tokenizer=None, api_key: str | None = None,
                 scenario: str = "chat", scale: float = 1.0, concurrency: str = "1,2,4", input_len: int = 128,
                 output_len: int = 64, num_prompts: int | None = None, export_dir: str = "."):
        served_url, served_model, served_key = _served()
        # The served model's key goes to its own endpoint only: never to another URL typed into the box.
        self._keys = {served_url: served_key} if served_key else {}
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.export_dir = Path(export_dir)
        self.bench: Bench | None = None
        self.rows: list[dict] = []
        self.points: list[float] = []  # TTFT (ms) of each finished request, for the live plot
        style = {"description_width": "110px"}
        self.endpoint = widgets.Text(value=base_url or served_url, description="endpoint", style=style)
        self.model = widgets.Text(value=model or served_model, description="model", style=style)
        self.scenario = widgets.Dropdown(options=[*SCENARIOS, "all", CUSTOM], value=scenario, description="use case", style=style)
        self.scale = widgets.FloatText(value=scale, description="length scale", style=style)
        self.concurrency = widgets.Text(value=concurrency, description="concurrency", style=style)
        self.input_len = widgets.IntText(value=input_len, description="input tokens", style=style)
        self.output_len = widgets.IntText(value=output_len, description="output tokens", style=style)
        self.num_prompts = widgets.IntText(value=num_prompts or 0, description="requests/run", style=style)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.json_button = widgets.Button(description="Export JSON", icon="download", disabled=True)
        self.csv_button = widgets.Button(description="Export CSV", icon="download", disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="requests")
        self.status = widgets.HTML()
        self.plot = widgets.HTML()
        self.results = widgets.HTML()
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.json_button.on_click(lambda _: self.export("json"))
        self.csv_button.on_click(lambda _: self.export("csv"))
        super().__init__([
            widgets.HBox([widgets.VBox([self.endpoint, self.model, self.scenario, self.scale]),
                          widgets.VBox([self.concurrency, self.input_len, self.output_len, self.num_prompts])]),
            widgets.HBox([self.run_button, self.cancel_button, self.json_button, self.csv_button]),
            self.progress, self.status, self.plot, self.results,
        ])

    # ------------------------------------------------------------------ actions

    def run(self) -> threading.Thread:
        if self.tokenizer is None:
            from .scenarios import bench_tokenizer

            self.tokenizer = bench_tokenizer(self.model.value)
        key = self.api_key or self._keys.get(self.endpoint.value)
        self.bench = bench = Bench(self.endpoint.value, self.model.value, self.tokenizer,
                                   num_prompts=self.num_prompts.value or None, api_key=key, progress=self._say)
        bench.on_result = self._finished_request
        self.rows, self.points = [], []
        self.progress.value, self.progress.max = 0, self._planned()
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.results.value, self.plot.value = "", ""
        thread = threading.Thread(target=self._work, args=(bench,), daemon=True)
        thread.start()
        return thread

    def cancel(self) -> None:
        if self.bench:
            self.bench.cancel()
            self._say("cancelling: requests in flight are stopped, finished ones are kept")

    def export(self, kind: str) -> Path:
        runs = self.bench.runs if self.bench else []
        if not runs:
            raise TTError("nothing to export yet: run the benchmark first")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.export_dir / f"bench-{stamp}.{kind}"
        if kind == "json":
            path.write_text(json.dumps({"base_url": self.endpoint.value, "model_id": self.model.value,
                                        "runs": runs, "recommendation": self.rows}, indent=1))
        else:
            report.write_csv(runs, path)
        self._say(f"wrote {path}")
        return path

    # ------------------------------------------------------------------ the run (a helper thread)

    def _planned(self) -> int:
        n = self.num_prompts.value
        if self.scenario.value == CUSTOM:
            cs = [int(c) for c in self.concurrency.value.split(",") if c.strip()]
        else:
            names = list(SCENARIOS) if self.scenario.value == "all" else [self.scenario.value]
            cs = [c for name in names for c in SCENARIOS[name].concurrency]
        return sum(n or max(4 * c, 8) for c in cs)

    def _work(self, bench: Bench) -> None:
        try:
            if self.scenario.value == CUSTOM:
                for c in [int(c) for c in self.concurrency.value.split(",") if c.strip()]:
                    bench.run(c, self.input_len.value, self.output_len.value)
            else:
                names = list(SCENARIOS) if self.scenario.value == "all" else [self.scenario.value]
                for name in names:
                    self.rows += bench.scenario(SCENARIOS[name], self.scale.value)
            self._say("cancelled" if bench.cancelled else "done")
        except Exception as e:  # shown in the widget: the thread has no one else to tell
            self._say(f"failed: {e}")
        finally:
            self.results.value = self._table()
            self.run_button.disabled, self.cancel_button.disabled = False, True
            self.json_button.disabled = self.csv_button.disabled = not bench.runs

    def _say(self, text: str) -> None:
        """Show ``text`` (plain text, always escaped: it may carry a server's error message)."""
        self.status.value = f"<small>{html.escape(text)}</small>"

    def _finished_request(self, result) -> None:
        self.progress.value = min(self.progress.value + 1, self.progress.max)
        if result.success:
            self.points.append(result.ttft * 1000)
            self.plot.value = self._svg()

    def _svg(self) -> str:
        """TTFT of each finished request, a chart that grows while the run goes (hover a point for its value)."""
        points = [(i + 1, v, f"request {i + 1}: TTFT {v:.0f} ms") for i, v in enumerate(self.points)]
        return report.svg_chart({"TTFT": points}, "TTFT per request (ms)", "finished request", "ms", width=480, height=180)

    def _table(self) -> str:
        if not self.bench or not self.bench.runs:
            return ""
        cols = ["concurrency", "input_len", "output_len", "completed", "failed", "median_ttft_ms", "p99_ttft_ms",
                "median_tpot_ms", "median_itl_ms", "output_throughput"]
        cell = lambda v: "-" if v is None else html.escape(f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
        out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
        out += ["<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in self.bench.runs]
        out.append("</table>")
        if self.rows:
            out.append("<table><tr><th>use case</th><th>concurrency</th><th>SLO</th><th>measured</th><th>pass</th></tr>")
            for r in self.rows:
                verdict = "PASS" if r["pass"] else "FAIL"
                out.append(f"<tr><td>{html.escape(r['use_case'])}</td><td>{html.escape(str(r['concurrency']))}</td><td>{html.escape(r['slo'])}</td>"
                           f"<td>{html.escape(r['measured'])}</td><td><b>{verdict}</b></td></tr>")
            out.append("</table>")
            best = {r["use_case"]: r["max_concurrency_meeting_slo"] for r in self.rows}
            out.append("<p>largest concurrency meeting the SLO: " + ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in best.items()) + "</p>")
            if any(r["scale"] != 1 for r in self.rows):
                out.append(f"<p>lengths scaled by {self.rows[0]['scale']:g} from the published use cases</p>")
        return "".join(out)
