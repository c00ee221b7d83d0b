"""Reports of ``jupyter tt bench`` results: CSV, PNG plots, and saved runs side by side.

A result file is what ``jupyter tt bench --output`` writes: its ``runs`` (each with vLLM's field
names and per-request arrays). PNG plots need matplotlib (``pip install 'jupyter-tt[bench]'``); the
interactive HTML page (``write_html``: SVG with tooltips and series toggles) needs nothing.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import TTError

#: the scalar fields of a run, in the order of the CSV and the comparison table
RUN_FIELDS = [
    "concurrency", "request_rate", "input_len", "output_len", "num_prompts", "completed", "failed", "duration",
    "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
    "total_token_throughput",
    *(f"{stat}_{name}_ms" for name in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "std", "p50", "p90", "p99")),
]
COMPARED = ["completed", "failed", "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "median_e2el_ms"]


def load(path: str | Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TTError(f"cannot read a benchmark result from {path}: {e}") from None
    if "runs" not in result:  # a single run as vllm bench serve writes it
        result = {"runs": [result]}
    return result


def write_csv(runs: list[dict], path: str | Path) -> None:
    """One row per run; a second file ``<name>.requests.csv`` has one row per request."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_FIELDS)
        for run in runs:
            w.writerow([run.get(k, "") if run.get(k) is not None else "" for k in RUN_FIELDS])
    with path.with_suffix(".requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "concurrency", "input_len", "output_len", "ttft_s", "e2el_s", "tpot_s", "error"])
        for i, run in enumerate(runs):
            for req in _requests(run):
                w.writerow([i, run.get("concurrency"), *req])


def _requests(run: dict):
    for isl, osl, ttft, e2el, err in zip(run["input_lens"], run["output_lens"], run["ttfts"], run.get("e2els") or [None] * len(run["ttfts"]), run["errors"]):
        tpot = (e2el - ttft) / (osl - 1) if ttft is not None and e2el is not None and osl > 1 else None
        yield isl, osl, ttft, e2el, tpot, err


def compare(results: dict[str, dict]) -> str:
    """Saved results side by side: a column per run of each file, a row per metric."""
    columns = [(name, i, run) for name, result in results.items() for i, run in enumerate(result["runs"])]
    header = ["metric"] + [f"{name}#{i} c={run.get('concurrency')} {run.get('input_len')}/{run.get('output_len')}"
                           if len(results[name]["runs"]) > 1 else name for name, i, run in columns]
    rows = [header]
    for key in COMPARED:
        rows.append([key] + ["-" if run.get(key) is None else f"{run[key]:.2f}" for _, _, run in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows)


def plot(results: dict[str, dict], directory: str | Path) -> list[Path]:
    """TTFT and TPOT against concurrency, per-request TTFT against E2EL, and CDFs of TTFT and TPOT (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TTError("plots need matplotlib: pip install 'jupyter-tt[bench]'") from None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        runs = sorted((r for r in result["runs"] if r.get("concurrency")), key=lambda r: r["concurrency"])
        for ax, key in zip(axes, ("median_ttft_ms", "median_tpot_ms")):
            ax.plot([r["concurrency"] for r in runs], [r.get(key) for r in runs], marker="o", label=name)
    for ax, title in zip(axes, ("median TTFT (ms)", "median TPOT (ms)")):
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.legend()
    paths.append(_save(fig, out / "latency_vs_concurrency.png", plt))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        reqs = [r for run in result["runs"] for r in _requests(run) if r[2] is not None]
        ax.scatter([r[2] * 1000 for r in reqs], [r[3] * 1000 for r in reqs], s=10, label=name)
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("requests")
    ax.legend()
    paths.append(_save(fig, out / "requests.png", plt))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        reqs = [r for run in result["runs"] for r in _requests(run)]
        for ax, index in zip(axes, (2, 4)):
            values = sorted(r[index] * 1000 for r in reqs if r[index] is not None)
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=name)
    for ax, title in zip(axes, ("TTFT (ms)", "TPOT (ms)")):
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.legend()
    paths.append(_save(fig, out / "cdf.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def svg_chart(series: Mapping[str, Sequence[tuple[float, float, str]]], title: str, xlabel: str, ylabel: str, *,
              lines: bool = False, width: int = 520, height: int = 260, limits: Mapping[str, float] | None = None) -> str:
    """An SVG chart: each series' points (x, y, tooltip), joined where ``lines``. Hovering a point shows
    its tooltip; in ``write_html``'s page, clicking a legend entry hides or shows its series. ``limits``:
    dashed horizontal lines (an SLO), each labelled with its name."""
    points = [(x, y) for pts in series.values() for x, y, _ in pts if y is not None]
    if not points:
        return f"<svg width='{width}' height='40'><text x='5' y='20'>{html.escape(title)}: no data</text></svg>"
    limits = limits or {}
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = max([p[1] for p in points] + list(limits.values())) * 1.1 or 1.0
    # The legend sits above the plot area (one row per series), never on the data.
    left, bottom, top, right = 50, height - 35, 25 + 14 * len(series), width - 10
    sx = lambda x: left + (x - x0) / ((x1 - x0) or 1) * (right - left)  # noqa: E731
    sy = lambda y: bottom - y / y1 * (bottom - top)  # noqa: E731
    out = [f"<svg width='{width}' height='{height}' font-family='sans-serif' font-size='11'>",
           f"<text x='{left}' y='14' font-size='13'>{html.escape(title)}</text>",
           f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#999'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='#999'/>",
           f"<text x='{(left + right) / 2}' y='{height - 5}' text-anchor='middle'>{html.escape(xlabel)}</text>",
           f"<text x='4' y='{top + 10}'>{y1 / 1.1:.4g}</text><text x='4' y='{bottom}'>0</text>",
           f"<text x='{left}' y='{bottom + 14}'>{x0:.4g}</text><text x='{right}' y='{bottom + 14}' text-anchor='end'>{x1:.4g}</text>",
           f"<text x='{left + 4}' y='{top + 10}' fill='#666'>{html.escape(ylabel)}</text>"]
    for name, y in limits.items():
        out.append(f"<line x1='{left}' y1='{sy(y):.1f}' x2='{right}' y2='{sy(y):.1f}' stroke='#d62728' stroke-dasharray='5,4'/>"
                   f"<text x='{left + 4}' y='{sy(y) - 3:.1f}' fill='#d62728'>{html.escape(name)}</text>")
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        out.append(f"<g class='series' data-name='{html.escape(name)}'>")
        xy = [(sx(x), sy(y), tip) for x, y, tip in pts if y is not None]
        if lines and len(xy) > 1:
            out.append(f"<polyline fill='none' stroke='{color}' points='{' '.join(f'{a:.1f},{b:.1f}' for a, b, _ in xy)}'/>")
        out += [f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{color}'><title>{html.escape(tip)}</title></circle>" for a, b, tip in xy]
        out.append("</g>")
        out.append(f"<text class='legend' data-name='{html.escape(name)}' x='{right - 170}' y='{14 + 14 * (i + 1)}' "
                   f"fill='{color}' style='cursor:pointer'>● {html.escape(name)}</text>")
    return "".join(out) + "</svg>"


def charts(results: dict[str, dict]) -> list[str]:
    """The plots of ``plot``, as SVG charts with tooltips."""
    by_c = {name: sorted((r for r in res["runs"] if r.get("concurrency")), key=lambda r: r["concurrency"]) for name, res in results.items()}
    out = []
    for key, title in (("median_ttft_ms", "median TTFT (ms)"), ("median_tpot_ms", "median TPOT (ms)")):
        series = {name: [(r["concurrency"], r.get(key), f"{name}: c={r['concurrency']} {r['input_len']}/{r['output_len']}: "
                          f"{r.get(key) or 0:.1f} ms") for r in runs] for name, runs in by_c.items()}
        out.append(svg_chart(series, title, "concurrency", "ms", lines=True))
    scatter = {name: [(r[2] * 1000, r[3] * 1000, f"{name}: TTFT {r[2] * 1000:.0f} ms, E2EL {r[3] * 1000:.0f} ms, "
                       f"{r[1]} tokens") for run in res["runs"] for r in _requests(run) if r[2] is not None and r[3] is not None]
               for name, res in results.items()}
    out.append(svg_chart(scatter, "requests", "TTFT (ms)", "E2EL (ms)"))
    for index, title in ((2, "TTFT"), (4, "TPOT")):
        series = {}
        for name, res in results.items():
            values = sorted(r[index] * 1000 for run in res["runs"] for r in _requests(run) if r[index] is not None)
            series[name] = [(v, (i + 1) / len(values), f"{name}: {i + 1}/{len(values)} at most {v:.1f} ms") for i, v in enumerate(values)]
        out.append(svg_chart(series, f"CDF of {title}", f"{title} (ms)", "fraction", lines=True))
    return out


def write_html(results: dict[str, dict], path: str | Path) -> None:
    """One self-contained page: the charts (hover a point for its values, click a legend entry to hide
    its series) and the comparison table."""
    script = ("document.querySelectorAll('.legend').forEach(l => l.onclick = () => {"
              "document.querySelectorAll(`.series[data-name=\"${CSS.escape(l.dataset.name)}\"]`).forEach(g =>"
              "g.style.display = g.style.display === 'none' ? '' : 'none'); l.style.opacity = l.style.opacity === '0.4' ? '1' : '0.4';});")
    body = "".join(f"<div style='display:inline-block;margin:6px'>{c}</div>" for c in charts(results))
    Path(path).write_text(f"<!doctype html><meta charset='utf-8'><title>jupyter tt bench</title><body>{body}"
                          f"<pre>{html.escape(compare(results))}</pre><script>{script}</script></body>")
