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
from .published import reference_for
from .scenarios import REPORTED_FOR, SCENARIOS, Bench, scaled

CUSTOM = "custom sweep"
#: Tables that line up: numbers right-aligned in tabular figures, no cell wrapped.
TABLE = "<table style='border-collapse:collapse;font-variant-numeric:tabular-nums;white-space:nowrap'>"
CELL = "padding:1px 8px;border-bottom:1px solid #ddd"


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


def where_measured(base_url: str) -> tuple[str, int | None]:
    """Where the numbers come from, in words, and the chips of the kernel's lease (the device the run
    stands for): the served model's backend and the lease when ``base_url`` is this kernel's own server,
    else only the endpoint (what runs behind it is not known here)."""
    from ..serving.notebook import newest_server

    llm = newest_server()
    if llm is None or llm.base_url != base_url:
        return f"the endpoint {base_url} (what it runs on is not known here)", None
    if llm.backend != "ttnn":
        where = f"the {llm.backend} backend on this CPU"
    else:
        where = "the ttnn backend on this kernel's Wormhole devices"
    try:
        from ..kernels.current import lease

        held = lease()
    except TTError:
        return f"{llm.model} on {where}; the kernel holds no lease", None
    cards = ", ".join(f"{d.card_type} #{d.id}" for d in held.devices)
    where += f"; the kernel's lease: {cards}{' (SIMULATED: no card ran this)' if held.simulated else ''}"
    return f"{llm.model} on {where}", held.chips


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
        self.measured_on = ""  # where_measured(), at the start of the last run
        self.reference: str | None = None  # the published figures of the device the kernel's lease stands for
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
        self.plan = widgets.HTML()
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="requests")
        self.status = widgets.HTML()
        self.plot = widgets.HTML()
        self.results = widgets.HTML()
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.json_button.on_click(lambda _: self.export("json"))
        self.csv_button.on_click(lambda _: self.export("csv"))
        for field in (self.scenario, self.scale, self.concurrency, self.input_len, self.output_len):
            field.observe(lambda _: self._show_plan(), names="value")
        super().__init__([
            widgets.HBox([widgets.VBox([self.endpoint, self.model, self.scenario, self.scale]),
                          widgets.VBox([self.concurrency, self.input_len, self.output_len, self.num_prompts])]),
            self.plan,
            widgets.HBox([self.run_button, self.cancel_button, self.json_button, self.csv_button]),
            self.progress, self.status, self.plot, self.results,
        ])
        self._show_plan()

    def planned_runs(self) -> list[tuple[str, int, int, int]]:
        """What Run will measure: (use case, concurrency, input tokens, output tokens) per run. The form
        shows exactly these: a use case's own lengths (scaled) and concurrencies, or the custom sweep's."""
        if self.scenario.value == CUSTOM:
            return [(CUSTOM, c, self.input_len.value, self.output_len.value) for c in self._sweep()]
        names = list(SCENARIOS) if self.scenario.value == "all" else [self.scenario.value]
        return [(SCENARIOS[n].use_case, c, scaled(SCENARIOS[n].input_len, self.scale.value),
                 scaled(SCENARIOS[n].output_len, self.scale.value)) for n in names for c in SCENARIOS[n].concurrency]

    def _sweep(self) -> list[int]:
        return [int(c) for c in self.concurrency.value.split(",") if c.strip().isdigit()]

    def _show_plan(self) -> None:
        custom = self.scenario.value == CUSTOM
        for field in (self.concurrency, self.input_len, self.output_len):  # the sweep's: shown for it only
            field.layout.display = None if custom else "none"
        self.scale.layout.display = "none" if custom else None
        lines = []
        for use_case in dict.fromkeys(r[0] for r in self.planned_runs()):
            runs = [r for r in self.planned_runs() if r[0] == use_case]
            scenario = next((sc for sc in SCENARIOS.values() if sc.use_case == use_case), None)
            lengths = f"ISL {runs[0][2]:,}, OSL {runs[0][3]:,}"
            if scenario and self.scale.value != 1:
                lengths += f" (the use case's {scenario.input_len:,}/{scenario.output_len:,} × {self.scale.value:g})"
            slo = f"; SLO {scenario.slo}" if scenario else ""
            lines.append(f"{use_case}: concurrency {', '.join(str(r[1]) for r in runs)}; {lengths}{slo}")
        self.plan.value = "<small>Runs: " + html.escape(" · ".join(lines) or "none (give concurrencies)") + "</small>"

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
                                        "measured_on": self.measured_on, "reference": self.reference, "runs": runs,
                                        "recommendation": self.rows},
                                       indent=1))
        else:
            report.write_csv(runs, path)
        self._say(f"wrote {path}")
        return path

    # ------------------------------------------------------------------ the run (a helper thread)

    def _planned(self) -> int:
        n = self.num_prompts.value
        return sum(n or max(4 * c, 8) for _, c, _, _ in self.planned_runs())

    def _work(self, bench: Bench) -> None:
        self.measured_on, chips = where_measured(self.endpoint.value)
        self.reference = reference_for(chips) if chips else None
        try:
            if self.scenario.value == CUSTOM:
                for _, c, isl, osl in self.planned_runs():
                    bench.run(c, isl, osl)
            else:
                names = list(SCENARIOS) if self.scenario.value == "all" else [self.scenario.value]
                for name in names:
                    self.rows += bench.scenario(SCENARIOS[name], self.scale.value)
            self._say("cancelled" if bench.cancelled else "done")
        except Exception as e:  # shown in the widget: the thread has no one else to tell
            self._say(f"failed: {e}")
        finally:
            self.results.value = self._table()
            if bench.runs:
                self.plot.value = self._by_concurrency()
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

    def _by_concurrency(self) -> str:
        """Median TTFT and TPOT against concurrency (one pair of lines per use case), with each use case's
        TTFT limit as a dashed line."""
        label = {(isl, osl): use_case for use_case, _, isl, osl in self.planned_runs()}
        series: dict[str, list[tuple[float, float, str]]] = {}
        for r in sorted(self.bench.runs if self.bench else [], key=lambda r: r["concurrency"]):
            name, c = label.get((r["input_len"], r["output_len"]), f"{r['input_len']}/{r['output_len']}"), r["concurrency"]
            series.setdefault(f"{name}: TTFT", []).append((c, r["median_ttft_ms"], f"c={c}: TTFT {r['median_ttft_ms'] or 0:.0f} ms"))
            series.setdefault(f"{name}: TPOT", []).append((c, r["median_tpot_ms"], f"c={c}: TPOT {r['median_tpot_ms'] or 0:.1f} ms"))
        names = {row["scenario"] for row in self.rows}
        limits = {f"{sc.use_case}: {sc.slo}": sc.ttft_limit_ms for n, sc in SCENARIOS.items()
                  if n in names and sc.ttft_limit_ms}
        return report.svg_chart(series, "median TTFT and TPOT by concurrency (ms)", "concurrency", "ms", lines=True,
                                width=560, height=240, limits=limits)

    def _table(self) -> str:
        if not self.bench or not self.bench.runs:
            return ""
        cols = ["concurrency", "input_len", "output_len", "completed", "failed", "median_ttft_ms", "p99_ttft_ms",
                "median_tpot_ms", "median_itl_ms", "output_throughput"]
        cell = lambda v: "-" if v is None else html.escape(f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
        head = lambda names: "<tr>" + "".join(f"<th style='{CELL};text-align:left'>{n}</th>" for n in names) + "</tr>"  # noqa: E731
        out = [f"<p>Measured on {html.escape(self.measured_on)}.</p>", TABLE, head(cols)]
        out += ["<tr>" + "".join(f"<td style='{CELL};text-align:right'>{cell(r.get(c))}</td>" for c in cols) + "</tr>"
                for r in self.bench.runs]
        out.append("</table>")
        if self.reference:
            out.append(f"<p>Published for Llama-3.1-8B-Instruct on the device this lease stands for, "
                       f"{html.escape(self.reference)}. Set this run beside it at those conditions: a custom sweep "
                       f"of concurrency 1, 128 input and 128 output tokens.</p>")
        if self.rows:
            out += [TABLE, head(["pass", "use case", "concurrency", "ISL/OSL", "SLO", "measured", "reported by the vendor"])]
            for r in self.rows:
                verdict = "<b style='color:#2ca02c'>PASS</b>" if r["pass"] else "<b style='color:#d62728'>FAIL</b>"
                texts = [r["use_case"], str(r["concurrency"]), f"{r['input_len']}/{r['output_len']}", r["slo"],
                         r["measured"], SCENARIOS[r["scenario"]].reported]
                out.append(f"<tr><td style='{CELL}'>{verdict}</td>"
                           + "".join(f"<td style='{CELL}'>{html.escape(t)}</td>" for t in texts) + "</tr>")
            out.append("</table>")
            best = {r["use_case"]: r["max_concurrency_meeting_slo"] for r in self.rows}
            out.append("<p>largest concurrency meeting the SLO: " + ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in best.items()) + "</p>")
            out.append(f"<p><small>Reported by the vendor: {html.escape(REPORTED_FOR)}, at the use case's full lengths."
                       "</small></p>")
            if any(r["scale"] != 1 for r in self.rows):
                out.append(f"<p>lengths scaled by {self.rows[0]['scale']:g} from the published use cases</p>")
        return "".join(out)
