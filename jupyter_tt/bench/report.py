"""Reports of ``jupyter tt bench`` results: CSV, PNG plots, and saved runs side by side.

A result file is what ``jupyter tt bench --output`` writes: its ``runs`` (each with vLLM's field
names and per-request arrays). Plots need matplotlib (``pip install 'jupyter-tt[bench]'``).
"""

from __future__ import annotations

import csv
import json
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
