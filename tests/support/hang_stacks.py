"""When a test (or a notebook cell) is about to time out, print every thread's stack of every process it started.

pytest-timeout prints the test runner's own threads only; a hang usually sits in a process the test
started: a Jupyter server, a kernel, the model server a notebook serves from, the scheduler service.
Shortly before an item's deadline, this plugin runs ``py-spy dump`` on every Python process below the
runner (children of children included, whatever user they run as) and prints what it finds, so that
the next intermittent failure names its cause. The same text goes to ``test-artifacts/hangs/``.

An item's deadline is pytest-timeout's (``timeout`` in pyproject.toml, or a ``timeout`` mark); for a
notebook cell, nbval's ``--nbval-cell-timeout`` when that is sooner. Both conftests load this plugin.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

#: Seconds before the deadline at which the stacks are taken (py-spy takes about a second a process).
MARGIN = 20.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "hangs"


def deadline(item: pytest.Item) -> float | None:
    """Seconds the item may run before it is failed, or None when nothing bounds it."""
    limits = []
    mark = item.get_closest_marker("timeout")
    if mark and mark.args:
        limits.append(float(mark.args[0]))
    else:
        given = item.config.getoption("timeout", None) or item.config.getini("timeout")
        if given:
            limits.append(float(given))
    if type(item).__name__ == "IPyNbCell":  # nbval interrupts the kernel at its own cell deadline
        cell = item.config.getoption("nbval_cell_timeout", None)
        if cell:
            limits.append(float(cell))
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def python_descendants() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "python" in Path(proc.exe()).name or any("python" in part for part in proc.cmdline()[:1]):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def dump_stacks(title: str) -> str:
    """Every thread's stack of every Python process below this one, as text (py-spy; native frames too)."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    lines = [f"===== {title}: stacks of the processes this test started ({time.strftime('%H:%M:%S')}) ====="]
    procs = python_descendants()
    if not procs:
        lines.append("(no Python process below the test runner)")
    for proc in procs:
        try:
            command = " ".join(proc.cmdline())[:300]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        lines.append(f"----- pid {proc.pid}: {command}")
        if not spy:
            lines.append("(py-spy is not installed: pip install py-spy)")
            continue
        try:
            out = subprocess.run([spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=30)
            lines.append((out.stdout or out.stderr).rstrip())
        except subprocess.TimeoutExpired:
            lines.append("(py-spy did not answer within 30 s)")
    return "\n".join(lines)


def _report(item: pytest.Item, after: float) -> None:
    text = dump_stacks(f"{item.nodeid} still running after {after:.0f} s")
    print(text, file=sys.__stderr__, flush=True)
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", item.nodeid)[-150:]
        (ARTIFACTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.txt").write_text(text + "\n")
    except OSError:
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = deadline(item)
    timer = None
    if limit:
        after = max(limit - MARGIN, limit * 0.8)
        timer = threading.Timer(after, _report, args=(item, after))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()
