"""Scheduler benchmark: acquire+release latency, and kernel start time with tt-provisioner.

    .venv/bin/python benchmarks/scheduler.py [--cycles 300] [--kernel-starts 10]

1. Acquire+release of one device (p50/p99, ms) on simulated inventories of 4, 64 and 1,024
   devices, with 1 and with 8 processes doing it at once, in personal mode (one SQLite state dir
   shared by the processes) and through the scheduler service (``jupyter tt scheduler`` on a Unix
   socket), side by side in one run. With 8 processes on 4 devices, requests queue: that row
   measures waiting, not the scheduler's own cost.
2. Kernel start (start + wait for ready, ms) through tt-provisioner and through jupyter_client's
   plain LocalProvisioner, interleaved in the same run so both see the same machine load.

Targets: p99 acquire+release < 10 ms at 64 devices with 1 process in personal mode (issue 2) and
< 5 ms through the service (issue 13); median kernel start overhead < 10%. The inventory is SIMULATED: on a real host the sysfs reads add to a pass.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPECS = {4: "n300x4", 64: "n300x64", 1024: "n300x1024"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _cycles(state_dir: str, spec: str, cycles: int, user: str, start, out, socket_path: str | None) -> None:
    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.scheduler import Scheduler
    from jupyter_tt.scheduler.client import ServiceClient

    scheduler = ServiceClient(socket_path) if socket_path else Scheduler(SimulatedInventory(spec), state_dir, user=user)
    scheduler.poll_interval = 0.01  # waiters look often, so queued cycles measure the queue, not the poll
    scheduler.release(scheduler.acquire(1).id)  # warm-up: schema, inventory, process lookups
    start.wait()
    latencies = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        lease = scheduler.acquire(1)
        scheduler.release(lease.id)
        latencies.append((time.perf_counter() - t0) * 1000)
    out.put(latencies)


def service(state_dir: str, spec: str) -> tuple[subprocess.Popen, str]:
    """``jupyter tt scheduler`` on a simulated inventory: (process, socket path) once it listens."""
    import socket

    path = os.path.join(state_dir, "scheduler.sock")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_tt.cli", "scheduler", "--socket", path, "--state-dir",
                             os.path.join(state_dir, "service")], env={**os.environ, "JUPYTER_TT_INVENTORY": f"simulated:{spec}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(path) == 0:
                return proc, path
        time.sleep(0.05)
    raise RuntimeError("the scheduler service did not start")


def acquire_release(devices: int, processes: int, cycles: int, mode: str = "personal") -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state_dir:
        server, socket_path = service(state_dir, SPECS[devices]) if mode == "service" else (None, None)
        start, out = ctx.Event(), ctx.Queue()
        workers = [
            ctx.Process(target=_cycles, args=(state_dir, SPECS[devices], cycles, f"user{i % 4}", start, out, socket_path))
            for i in range(processes)
        ]
        for w in workers:
            w.start()
        time.sleep(1.0 + 0.2 * processes)  # let every worker finish its warm-up
        t0 = time.perf_counter()
        start.set()
        latencies = [x for _ in workers for x in out.get()]
        wall = time.perf_counter() - t0
        for w in workers:
            w.join()
        if server:
            server.terminate()
            server.wait()
    return {
        "mode": mode,
        "devices": devices,
        "processes": processes,
        "cycles": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "cycles_per_s": len(latencies) / wall,
    }


def kernel_starts(n: int) -> dict:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel

    from jupyter_tt.kernels.kernelspec import kernelspec

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_TT_STATE_DIR"] = str(Path(tmp) / "state")
        os.environ["JUPYTER_TT_INVENTORY"] = "simulated:n300x4"
        prefix = Path(tmp) / "prefix"
        for name, spec in [("bench-tt", kernelspec(1, "n300")), ("bench-plain", kernelspec(0, "any"))]:
            if name == "bench-plain":
                del spec["metadata"]["kernel_provisioner"]  # jupyter_client's default LocalProvisioner
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "kernel.json").write_text(json.dumps(spec))
            KernelSpecManager().install_kernel_spec(str(folder), name, prefix=str(prefix))
        os.environ["JUPYTER_PATH"] = str(prefix / "share/jupyter")
        times: dict[str, list[float]] = {"bench-plain": [], "bench-tt": []}
        for i in range(n + 1):
            for name in (("bench-plain", "bench-tt") if i % 2 else ("bench-tt", "bench-plain")):
                t0 = time.perf_counter()
                km, client = start_new_kernel(kernel_name=name, startup_timeout=60)
                elapsed = (time.perf_counter() - t0) * 1000
                client.stop_channels()
                km.shutdown_kernel(now=True)
                if i:  # the first round warms caches (imports, bytecode)
                    times[name].append(elapsed)
    plain, tt = statistics.median(times["bench-plain"]), statistics.median(times["bench-tt"])
    return {"starts": n, "plain_median_ms": plain, "tt_median_ms": tt, "overhead_pct": (tt - plain) / plain * 100}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300, help="acquire+release cycles per process")
    parser.add_argument("--kernel-starts", type=int, default=10, help="kernel starts per provisioner")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print("Acquire + release of 1 device (SIMULATED inventory): personal mode (one SQLite state dir shared by the")
    print("processes) and the scheduler service (a Unix socket), side by side")
    print(f"{'devices':>8} {'procs':>6} {'mode':>9} {'cycles':>7} {'p50 ms':>8} {'p99 ms':>8} {'cycles/s':>9}")
    rows = []
    for devices in (4, 64, 1024):
        for processes in (1, 8):
            for mode in ("personal", "service"):
                row = acquire_release(devices, processes, args.cycles if processes == 1 else max(args.cycles // 4, 20), mode)
                rows.append(row)
                print(f"{devices:>8} {processes:>6} {mode:>9} {row['cycles']:>7} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                      f"{row['cycles_per_s']:>9.0f}")
    for mode, limit in (("personal", 10), ("service", 5)):
        target = next(r for r in rows if r["devices"] == 64 and r["processes"] == 1 and r["mode"] == mode)
        print(f"target ({mode}): p99 < {limit} ms at 64 devices, 1 process: {target['p99_ms']:.2f} ms -> "
              f"{'MET' if target['p99_ms'] < limit else 'NOT MET'}")

    print(f"\nKernel start to ready (median of {args.kernel_starts}, interleaved)")
    k = kernel_starts(args.kernel_starts)
    print(f"  plain LocalProvisioner : {k['plain_median_ms']:.0f} ms")
    print(f"  tt-provisioner (1 n300): {k['tt_median_ms']:.0f} ms")
    print(f"  overhead: {k['overhead_pct']:+.1f}% -> {'MET' if k['overhead_pct'] < 10 else 'NOT MET'} (target < 10%)")
    if args.json:
        args.json.write_text(json.dumps({"acquire_release": rows, "kernel_start": k}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
