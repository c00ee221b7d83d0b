"""Scheduler benchmark: acquire+release latency, and kernel start time with tt-provisioner.

    .venv/bin/python benchmarks/scheduler.py [--cycles 300] [--kernel-starts 10]

1. Acquire+release of one device (p50/p99, ms) on simulated inventories of 4, 64 and 1,024
   devices, with 1 and with 8 processes doing it at once against one state dir. With 8 processes
   on 4 devices, requests queue: that row measures waiting, not the scheduler's own cost.
2. Kernel start (start + wait for ready, ms) through tt-provisioner and through jupyter_client's
   plain LocalProvisioner, interleaved in the same run so both see the same machine load.

Targets (issue 2): p99 acquire+release < 10 ms at 64 devices with 1 process; median kernel start
overhead < 10%. The inventory is SIMULATED: on a real host the sysfs reads add to a pass.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SPECS = {4: "n300x4", 64: "n300x64", 1024: "n300x1024"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _cycles(state_dir: str, spec: str, cycles: int, user: str, start, out) -> None:
    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.scheduler import Scheduler

    scheduler = Scheduler(SimulatedInventory(spec), state_dir, user=user)
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


def acquire_release(devices: int, processes: int, cycles: int) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state_dir:
        start, out = ctx.Event(), ctx.Queue()
        workers = [
            ctx.Process(target=_cycles, args=(state_dir, SPECS[devices], cycles, f"user{i % 4}", start, out))
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
    return {
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

    print("Acquire + release of 1 device (SIMULATED inventory; one SQLite state dir shared by all processes)")
    print(f"{'devices':>8} {'procs':>6} {'cycles':>7} {'p50 ms':>8} {'p99 ms':>8} {'cycles/s':>9}")
    rows = []
    for devices in (4, 64, 1024):
        for processes in (1, 8):
            row = acquire_release(devices, processes, args.cycles if processes == 1 else max(args.cycles // 4, 20))
            rows.append(row)
            print(f"{devices:>8} {processes:>6} {row['cycles']:>7} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['cycles_per_s']:>9.0f}")
    target = next(r for r in rows if r["devices"] == 64 and r["processes"] == 1)
    print(f"target: p99 < 10 ms at 64 devices, 1 process: {target['p99_ms']:.2f} ms -> {'MET' if target['p99_ms'] < 10 else 'NOT MET'}")

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
