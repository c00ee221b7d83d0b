"""Serving benchmark: our server against the peer servers, side by side in one run.

    python benchmarks/serving.py setup            # build the peers' venvs under .peers/ (about 10 minutes)
    python benchmarks/serving.py run              # all systems, all workloads (about 15 minutes)
    python benchmarks/serving.py run --systems ours,llamacpp --quick
    python benchmarks/llama_server.py build       # the llamacpp peer (llama-server), cached outside the clone

Every system serves the embedded model (SmolLM2-135M-Instruct) on this machine's CPU and gets the
same prompts from the same client (``jupyter_tt.bench.client``: vLLM's metric definitions, greedy,
``ignore_eos``, one warm-up request). The servers all start first (idle, they cost no CPU); then
each workload runs on each of them in turn, in ``--rounds`` interleaved rounds (A B, then B A) with
fresh prompts, so that a slow spell of this shared machine does not fall on one system only. The
``transformers`` peer runs afterwards in its own process. The peers:

- ``llamacpp``: llama.cpp's own ``llama-server`` (built by ``benchmarks/llama_server.py``) on the
  Q4_1 GGUF itself, a thread per core, 8 parallel slots with continuous batching: the command that
  ``serve(engine="llama.cpp")`` runs. Its per-slot prompt cache is off (``cache_prompt: false``), as
  no other system reuses a prompt.
- ``llamacpp-python``: llama-cpp-python's server on the same GGUF, 2 threads, one request at a time
  (abetlen/llama-cpp-python#1329). It ignores ``ignore_eos``, so end-of-text tokens get a logit bias
  of -100; it sends no usage, so its output tokens are counted with the tokenizer.
- ``vllm``: vLLM's CPU build (``benchmarks/vllm_cpu.py``) on a bfloat16 Hugging Face copy of the
  GGUF: the command that ``serve(engine="vllm")`` runs, with its AMX kernels
  (``VLLM_CPU_SGL_KERNEL=1``) where the CPU has AMX. Its PyPI wheels are built for AVX-512: on a CPU
  without it the system is reported as skipped, with the reason.
- ``transformers``: ``generate`` in-process (float32, batch 1, its own venv): concurrency 1 only.
- ``ours``: ``jupyter tt serve --backend openvino`` (int8 weights; OpenVINO picks bfloat16 or float32
  activations for this CPU). The targets are its ratios.
- ``ours-torch``: ``jupyter tt serve --backend torch`` (int8 weights), the reference runner, for comparison.

Workloads (ISL/OSL in tokens, concurrency): 128/64 at 1, 4 and 8; 1024/32 at 1; 128/256 at 1.
Prints this machine's read bandwidth and the decode floor it sets (int8 weights read per token /
bandwidth), median TTFT and TPOT (ms) and output tokens/s per workload, the targets as ratios to the
best peer at each point (each MET or NOT MET), and the idle memory of each server; writes everything
to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".peers"
sys.path.insert(0, str(ROOT))

import llama_server  # noqa: E402 (benchmarks/llama_server.py)
import vllm_cpu  # noqa: E402 (benchmarks/vllm_cpu.py)
from jupyter_tt.bench import client  # noqa: E402
from jupyter_tt.serving.backends.openvino.runner import default_precision  # noqa: E402
from jupyter_tt.serving.checkpoint import DEFAULT_MODEL, load_tokenizer, resolve  # noqa: E402
from jupyter_tt.serving.engines import hf_folder, llama_cpp_launch, vllm_launch  # noqa: E402

SYSTEMS = ("ours", "ours-torch", "llamacpp", "llamacpp-python", "vllm", "transformers")
WORKLOADS = [(128, 64, 1), (128, 64, 4), (128, 64, 8), (1024, 32, 1), (128, 256, 1)]
SERVED_NAME = "smollm2"
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"

# ------------------------------------------------------------------------------------------ setup

LLAMA_CPP_CMAKE = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON {avx512} "
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)


def sh(*cmd: str, env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})


def setup(args) -> None:
    """Each peer in its own venv under .peers/ (ignored by git), with the recipes in ``setup``."""
    PEERS.mkdir(exist_ok=True)
    llama_server.build()  # the llamacpp peer: llama-server, cached outside the clone
    flags = llama_server.cpu_flags()
    avx512 = "avx512f" in flags
    if not (PEERS / "llamacpp/bin/python").exists():
        sh(sys.executable, "-m", "venv", str(PEERS / "llamacpp"))
        opts = "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" if avx512 else "-DGGML_AVX512=OFF"
        # The default native build crashes on some hosts with an illegal AMX instruction.
        sh(str(PEERS / "llamacpp/bin/pip"), "install", LLAMA_CPP,
           env={"CMAKE_BUILD_PARALLEL_LEVEL": "2", "CMAKE_ARGS": LLAMA_CPP_CMAKE.format(avx512=opts)})
    if not (PEERS / "transformers/bin/python").exists():
        sh(sys.executable, "-m", "venv", str(PEERS / "transformers"))
        sh(str(PEERS / "transformers/bin/pip"), "install", "torch==2.13.0", "transformers", "gguf", "accelerate")
    if vllm_cpu.unavailable() is None:
        vllm_cpu.build()  # the vllm peer: vllm-cpu in a venv of its own, cached outside the clone
    print("peers ready under", PEERS)


# ------------------------------------------------------------------------------------------ peers


def unavailable(system: str) -> str | None:
    """Why ``system`` cannot run here, or None."""
    if system == "vllm":
        if (why := vllm_cpu.unavailable()) is not None:
            return why
        return None if vllm_cpu.installed() else "not installed (python benchmarks/vllm_cpu.py build)"
    if system == "llamacpp":
        return None if llama_server.binary().exists() else "not built (python benchmarks/llama_server.py build)"
    venv = {"llamacpp-python": "llamacpp", "transformers": "transformers"}.get(system)
    if venv and not (PEERS / venv / "bin/python").exists():
        return "not installed (python benchmarks/serving.py setup)"
    return None


def server_command(system: str, gguf: Path, port: int) -> tuple[list[str], dict]:
    if system in ("ours", "ours-torch"):
        backend = "torch" if system == "ours-torch" else "openvino"
        return [sys.executable, "-m", "jupyter_tt.cli", "serve", "--backend", backend, "--port", str(port),
                "--served-model-name", SERVED_NAME], {}
    if system == "llamacpp":
        if "JUPYTER_TT_LLAMA_SERVER" not in os.environ and llama_server.binary().exists():
            os.environ["JUPYTER_TT_LLAMA_SERVER"] = str(llama_server.binary())
        launch = llama_cpp_launch(gguf, SERVED_NAME, port, api_key="")
        return launch.command, {}
    if system == "llamacpp-python":
        return [
            str(PEERS / "llamacpp/bin/python"), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
            SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
            "--n_threads_batch", "2", "--interrupt_requests", "False",
        ], {}
    if system == "vllm":  # the command serve(engine="vllm") runs, on the same Hugging Face copy
        python = str(vllm_cpu.installed())
        launch = vllm_launch(str(hf_folder(gguf, python)), SERVED_NAME, port, "", python=python,
                             engine_args=["--max-model-len", "4096"])
        env = {k: v for k, v in launch.env.items() if v}
        if "amx_tile" in llama_server.cpu_flags():
            env["VLLM_CPU_SGL_KERNEL"] = "1"  # its AMX kernels: vLLM-CPU at its best on this CPU
        return launch.command, env
    raise ValueError(system)


def tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    """One peer's server process, started before the workloads and stopped after all of them."""

    def __init__(self, system: str, gguf: Path, tokenizer, log_dir: Path):
        self.system = system
        port = 8100 + SYSTEMS.index(system)
        self.base = f"http://127.0.0.1:{port}"
        cmd, env = server_command(system, gguf, port)
        self.log = open(log_dir / f"{system}.log", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
        self.info: dict = {}
        try:
            wait_ready(self.base, self.proc, timeout=600)
        except RuntimeError:
            self.stop()
            raise
        self.info["startup_s"] = time.monotonic() - t0
        time.sleep(2)
        self.info["idle_rss_mb"] = tree_rss(self.proc.pid) / 2**20
        # llama-cpp-python ignores ignore_eos: keep end-of-text tokens out instead. llama-server honours it,
        # and would answer a repeated prompt prefix from its slot's cache.
        self.extra = ({"logit_bias": {str(t): -100 for t in eos_ids(tokenizer)}} if system == "llamacpp-python"
                      else {"cache_prompt": False} if system == "llamacpp" else {})

    def measure(self, prompts, warm, osl: int, c: int, count) -> client.RunResult:
        return asyncio.run(client.run(self.base, SERVED_NAME, prompts, osl, c, count, warmup_prompts=warm, extra_body=self.extra))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.info["idle_rss_after_mb"] = tree_rss(self.proc.pid) / 2**20
        stop(self.proc)
        self.log.close()


def bench_servers(systems: list[str], gguf: Path, workloads, prompts, tokenizer, log_dir: Path, rounds: int) -> dict:
    """Start every server (idle ones cost no CPU), then run each workload on each system in turn,
    ``rounds`` times with fresh prompts, so that this machine's slow spells fall on all of them alike."""
    results: dict = {}
    servers: list[Server] = []
    try:
        for system in systems:
            try:
                servers.append(Server(system, gguf, tokenizer, log_dir))
            except RuntimeError as e:
                results[system] = {"skipped": f"failed: {e} (see {log_dir})"}
                print(f"  {system}: failed: {e}", flush=True)

        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

        for server in servers:
            results[server.system] = {**server.info, "workloads": []}
        for isl, osl, c in workloads:
            timed, warm = prompts[(isl, osl, c)]
            n = len(timed) // rounds
            runs: dict[str, list[client.RunResult]] = {server.system: [] for server in servers}
            for r in range(rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for server in order:
                    runs[server.system].append(server.measure(timed[r * n : (r + 1) * n], warm, osl, c, count))
            for server in servers:
                parts = runs[server.system]
                merged = client.RunResult(c, isl, osl, sum(p.duration for p in parts), [q for p in parts for q in p.requests])
                summary = merged.summary()
                results[server.system]["workloads"].append(summary)
                print(f"  {server.system:12} {isl:5}/{osl:<4} c={c}  " + fmt(summary), flush=True)
    finally:
        for server in servers:
            server.stop()
            results.setdefault(server.system, {}).update(server.info)
    return results


def eos_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def bench_transformers(gguf: Path, workloads, prompts, log_dir: Path) -> dict:
    todo = [(isl, osl, c) for isl, osl, c in workloads if c == 1]
    job = {
        "gguf": str(gguf),
        "workloads": [
            {"input_len": isl, "output_len": osl, "timed": [p.token_ids for p in prompts[(isl, osl, c)][0]],
             "warmup": [p.token_ids for p in prompts[(isl, osl, c)][1]]}
            for isl, osl, c in todo
        ],
    }
    job_file = log_dir / "transformers-job.json"
    job_file.write_text(json.dumps(job))
    result_file = log_dir / "transformers-result.json"
    with open(log_dir / "transformers.log", "w") as log:
        subprocess.run(
            [str(PEERS / "transformers/bin/python"), str(ROOT / "benchmarks/transformers_peer.py"), str(job_file), str(result_file)],
            check=True, stdout=log, stderr=subprocess.STDOUT,
        )
    out = json.loads(result_file.read_text())
    for s in out["workloads"]:
        print(f"  {'transformers':12} {s['input_len']:5}/{s['output_len']:<4} c=1  " + fmt(s), flush=True)
    return out


# ------------------------------------------------------------------------------------------ report


def read_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """This machine's read bandwidth in GB/s: the best of a few numpy reductions (``max``, which
    releases the GIL and needs no arithmetic to speak of) over a ``mb`` MB array, split over a thread
    per core as a decode step's matmuls split the weights."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(mb * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, os.cpu_count() or 1)
    with ThreadPoolExecutor(len(parts)) as pool:
        def once():
            list(pool.map(np.max, parts))

        once()  # fault the pages in
        best = min(_timed(once) for _ in range(repeats))
    return data.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_bytes() -> int:
    """Bytes of int8 weights a decode step reads: every matrix once (the tied LM head in full)."""
    from jupyter_tt.serving.checkpoint import load_checkpoint

    return sum(w.numel() for w in load_checkpoint(DEFAULT_MODEL, progress=False).weights.values() if w.dim() == 2)


def fmt(s: dict) -> str:
    def n(v, spec):
        return format(v, spec) if v is not None else "-"

    failed = f"  FAILED {s['failed']}: {s['errors'][:1]}" if s.get("failed") else ""
    return (
        f"TTFT {n(s['median_ttft_ms'], '8.1f')} ms  TPOT {n(s['median_tpot_ms'], '6.1f')} ms  "
        f"{n(s['output_throughput'], '6.1f')} tok/s{failed}"
    )


def find(results: dict, system: str, isl: int, osl: int, c: int) -> dict | None:
    for s in results.get(system, {}).get("workloads", []):
        if (s["input_len"], s["output_len"], s["concurrency"]) == (isl, osl, c):
            return s
    return None


def report(results: dict, workloads) -> list[str]:
    lines = ["", "median TTFT ms / median TPOT ms / output tok/s  (this machine, side by side)"]
    systems = [s for s in SYSTEMS if s in results]
    head = f"{'workload':16}" + "".join(f"{s:>26}" for s in systems)
    lines += [head, "-" * len(head)]
    for isl, osl, c in workloads:
        row = f"{isl}/{osl} c={c}".ljust(16)
        for system in systems:
            s = find(results, system, isl, osl, c)
            cell = "-" if s is None else "{} / {} / {}".format(
                *(("-" if v is None else f"{v:.1f}") for v in (s["median_ttft_ms"], s["median_tpot_ms"], s["output_throughput"]))
            )
            row += f"{cell:>26}"
        lines.append(row)
    for system in systems:
        r = results[system]
        if "skipped" in r:
            lines.append(f"{system}: skipped: {r['skipped']}")
        elif "idle_rss_mb" in r:
            lines.append(
                f"{system}: startup {r['startup_s']:.1f} s, idle memory {r['idle_rss_mb']:.0f} MiB "
                f"(after the run {r['idle_rss_after_mb']:.0f} MiB)"
            )

    floor = results.get("floor")
    if floor:
        lines.append(f"read bandwidth {floor['bandwidth_gb_s']:.1f} GB/s (numpy max over 512 MB, a thread per core); a decode step reads "
                     f"{floor['decode_mb']:.0f} MB of int8 weights -> decode floor {floor['tpot_floor_ms']:.2f} ms/token")
        ours = find(results, "ours", 128, 64, 1)
        if ours and ours["median_tpot_ms"]:
            lines.append(f"  ours at c=1: {ours['median_tpot_ms']:.1f} ms = {ours['median_tpot_ms'] / floor['tpot_floor_ms']:.1f}x the floor")
    lines += ["", "targets, as ratios to the best peer at each point (ratio = ours / peer)"]

    def best(metric, peers, isl, osl, c, lower_is_better):
        """The best measured peer at a point: (name, its row), or None if none ran."""
        rows = [(p, r) for p in peers if (r := find(results, p, isl, osl, c)) and r[metric] is not None]
        if not rows:
            return None
        return (min if lower_is_better else max)(rows, key=lambda pr: pr[1][metric])

    def ratio(metric, peers, isl, osl, c, want, label):
        a = find(results, "ours", isl, osl, c)
        b = best(metric, peers, isl, osl, c, lower_is_better=metric != "output_throughput")
        if not a or not b or a[metric] is None:
            lines.append(f"  {label}: not measured ({' / '.join(peers)} did not run here)")
            return
        x = a[metric] / b[1][metric]
        lines.append(f"  {label}: ours {a[metric]:.1f} vs {b[0]} {b[1][metric]:.1f} -> ratio {x:.2f}  "
                     f"{'MET' if want(x) else 'NOT MET'}")

    ratio("median_tpot_ms", ["llamacpp"], 128, 64, 1, lambda x: x <= 1.0, "TPOT c=1 (128/64) <= llama-server")
    ratio("median_tpot_ms", ["llamacpp"], 128, 256, 1, lambda x: x <= 1.0, "TPOT c=1 (128/256) <= llama-server")
    ratio("median_ttft_ms", ["vllm"], 128, 64, 1, lambda x: x <= 1.0, "TTFT c=1 ISL 128 <= vLLM-CPU")
    ratio("median_ttft_ms", ["vllm"], 1024, 32, 1, lambda x: x <= 1.0, "TTFT c=1 ISL 1024 <= vLLM-CPU")
    for c in (4, 8):
        ratio("output_throughput", ["vllm", "llamacpp"], 128, 64, c, lambda x: x >= 1.2,
              f"tok/s c={c} >= 1.2x the best of vLLM-CPU and llama-server")
    ours = results.get("ours", {})
    if "idle_rss_mb" in ours:
        lines.append(f"  idle memory of our server < 500 MiB: {ours['idle_rss_mb']:.0f} MiB  "
                     f"{'MET' if ours['idle_rss_mb'] < 500 else 'NOT MET'}")
    return lines


def run(args) -> None:
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"unknown systems {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    workloads = WORKLOADS
    gguf = resolve(DEFAULT_MODEL)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    scale = 0.5 if args.quick else 1.0
    prompts = {}
    for i, (isl, osl, c) in enumerate(workloads):
        n = max(int((4 if c == 1 else 4 * c) * scale * args.prompts), c)
        batch = client.random_prompts(tokenizer, n * args.rounds + 1, isl, seed=args.seed + i)
        prompts[(isl, osl, c)] = (batch[:-1], batch[-1:])

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="serving-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {"cpu": platform.processor() or "", "cores": os.cpu_count(), "avx512": "avx512f" in llama_server.cpu_flags(),
                    "amx": "amx_tile" in llama_server.cpu_flags(), "openvino_precision": default_precision(),
                    "flags": sorted(llama_server.cpu_flags() & {"avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16",
                                                   "amx_tile", "amx_int8", "amx_bf16"})},
        "model": str(gguf),
    }
    print(f"serving benchmark: {len(workloads)} workloads, systems {systems}, logs in {log_dir}", flush=True)
    bandwidth, weights = read_bandwidth(), decode_bytes()
    results["floor"] = {"bandwidth_gb_s": bandwidth, "decode_mb": weights / 1e6, "tpot_floor_ms": weights / (bandwidth * 1e9) * 1e3}
    print(f"  read bandwidth {bandwidth:.1f} GB/s, decode floor {results['floor']['tpot_floor_ms']:.2f} ms/token", flush=True)
    servers = []
    for system in systems:
        if why := unavailable(system):
            results[system] = {"skipped": why}
            print(f"  {system}: skipped: {why}", flush=True)
        elif system != "transformers":
            servers.append(system)
    if servers:
        results.update(bench_servers(servers, gguf, workloads, prompts, tokenizer, log_dir, args.rounds))
    if "transformers" in systems and "transformers" not in results:
        try:
            results["transformers"] = bench_transformers(gguf, workloads, prompts, log_dir)
        except subprocess.CalledProcessError as e:
            results["transformers"] = {"skipped": f"failed: {e} (see {log_dir})"}
    lines = report(results, workloads)
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**results, "report": lines}, indent=1))
        print("results written to", args.json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="make the peers' venvs under .peers/")
    r = sub.add_parser("run", help="run the workloads against each system")
    r.add_argument("--systems", default=",".join(SYSTEMS))
    r.add_argument("--quick", action="store_true", help="half the requests per workload")
    r.add_argument("--prompts", type=float, default=1.0, help="scale the number of requests per workload")
    r.add_argument("--rounds", type=int, default=2, help="runs of each workload per system, interleaved")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--json", default=None, help="write results here")
    r.add_argument("--log-dir", default=None, help="servers' logs (default: a temporary folder)")
    args = parser.parse_args()
    setup(args) if args.command == "setup" else run(args)


if __name__ == "__main__":
    main()
