"""``make test-stress``: run the concurrency-sensitive tests round after round on a busy CPU; pass rate per test.

An intermittent failure shows up here before it shows up in CI: the tests run ``--rounds`` times
while a busy loop per core (normal priority) takes CPU away from the servers, kernels and services
they start. Each round is a fresh pytest process (notebooks through nbval, as ``make test-notebooks``
runs them); a test that hangs prints its processes' stacks (``tests/support/hang_stacks.py``). The summary
gives each test's pass rate and the rounds it failed in; the exit status is 1 if any test failed.

    .venv/bin/python -m tests.support.stress --rounds 20 tests/test_service.py notebooks/03-benchmark.ipynb
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TARGETS = ["tests/test_enforcement.py", "tests/test_service.py", "notebooks/03-benchmark.ipynb"]
NBVAL = ["--nbval", "--nbval-sanitize-with", "notebooks/sanitize.cfg", "--nbval-cell-timeout=240"]  # as make test-notebooks


def busy(parent: int) -> None:
    """Keep a core busy until the stress run ends (or dies: its busy loops must not outlive it)."""
    n = 0
    while True:
        n += 1
        if n % 20_000_000 == 0 and os.getppid() != parent:
            return


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "amx_tile") if f in flags) or "no AVX2"


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped, from one round's JUnit XML (a run that wrote none: {})."""
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return {}
    found = {}
    for case in tree.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            found[name] = "failed"
        elif case.find("skipped") is not None:
            found[name] = "skipped"
        else:
            found[name] = "passed"
    return found


def run_round(targets: list[str], junit: Path, timeout: float) -> tuple[int, float]:
    notebooks = any(t.endswith(".ipynb") for t in targets)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *(NBVAL if notebooks else []), *targets]
    start = time.monotonic()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    return rc, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=DEFAULT_TARGETS, help="test files or notebooks (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy loops beside the tests (default: one per core)")
    parser.add_argument("--round-timeout", type=float, default=1800, help="seconds before a whole round is abandoned")
    parser.add_argument("--keep", type=Path, default=ROOT / "test-artifacts" / "stress", help="where each round's JUnit XML goes")
    args = parser.parse_args(argv)
    groups = [g for g in ([t for t in args.targets if not t.endswith(".ipynb")], [t for t in args.targets if t.endswith(".ipynb")]) if g]
    args.keep.mkdir(parents=True, exist_ok=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the loaders are stopped on the way out
    loaders = [multiprocessing.Process(target=busy, args=(os.getpid(),), daemon=True) for _ in range(args.load)]
    for p in loaders:
        p.start()
    print(f"stress: {args.rounds} rounds of {' '.join(args.targets)} beside {args.load} busy loop(s); "
          f"{os.cpu_count()} cores ({cpu_flags()})", flush=True)
    results: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    broken: list[str] = []
    try:
        for n in range(1, args.rounds + 1):
            for g, group in enumerate(groups):
                junit = args.keep / f"round-{n:02d}-{g}.xml"
                junit.unlink(missing_ok=True)
                rc, took = run_round(group, junit, args.round_timeout)
                seen = outcomes(junit)
                for name, outcome in seen.items():
                    results[name].append((n, outcome))
                failed = [k for k, v in seen.items() if v == "failed"]
                if rc not in (0, 1) or (rc == 1 and not failed):
                    broken.append(f"round {n}: pytest exited {rc} on {' '.join(group)}")
                print(f"round {n:2d} [{' '.join(Path(t).name for t in group)}]: {took:6.1f} s, "
                      f"{sum(v == 'passed' for v in seen.values())} passed, {len(failed)} failed"
                      + (f": {', '.join(failed)}" if failed else "") + (f" (pytest exit {rc})" if rc not in (0, 1) else ""),
                      flush=True)
    finally:
        for p in loaders:
            p.kill()

    print(f"\n{'test':<110} {'passed':>8}  failed in rounds")
    failures = 0
    for name, runs in sorted(results.items()):
        ran = [o for _, o in runs if o != "skipped"]
        bad = [n for n, o in runs if o == "failed"]
        failures += len(bad)
        print(f"{name[-110:]:<110} {sum(o == 'passed' for o in ran):>3}/{len(ran):<4}  {', '.join(map(str, bad)) or '-'}")
    for line in broken:
        print(line)
    print(f"\n{failures} failures in {sum(len(r) for r in results.values())} test runs over {args.rounds} rounds")
    return 1 if failures or broken else 0


if __name__ == "__main__":
    sys.exit(main())
