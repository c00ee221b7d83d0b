"""How many threads torch's operators use: every allowed core while the host is quiet, one while it is crowded.

torch runs each operator on a team of OpenMP threads and ends it at a barrier where the team waits
for its slowest member. When other processes want the same cores (a shared JupyterHub host, another
user's model, a compile), the OS preempts a team member for a time slice at a time, and a decode
step of a few hundred operators waits that long at many of its barriers. Seen on this project's
2-core machines with a busy loop per core: the embedded model went from ~25 ms a token to between
90 ms and more than a second, and a notebook's 20 s benchmark ran past its 5-minute deadline. One
thread has no barrier to wait at: under the same load it kept ~60 ms a token.

So between steps, about once a second of work, ``CpuThreads`` reads how much of the time some task
waited for a CPU (the kernel's pressure stall information, ``/proc/pressure/cpu``). Above ``HIGH``
it drops to one thread for at least ``HOLD`` seconds; below ``LOW`` it goes back to every core this
process may use. Where the kernel has no PSI, torch's own choice stays.
"""

from __future__ import annotations

import logging
import os
import time

import torch

log = logging.getLogger("jupyter_tt.engine")

PSI = "/proc/pressure/cpu"
#: Share of wall time with a task waiting for a CPU above which the host counts as crowded.
HIGH = 0.30
#: ... and below which it counts as quiet again.
LOW = 0.10
#: Seconds between two looks (measured while steps run), and the least time spent on one thread.
WINDOW, HOLD = 1.0, 10.0


def cpu_stall_us(path: str = PSI) -> int | None:
    """Microseconds in which some task waited for a CPU since boot (PSI "some total"), or None."""
    try:
        with open(path) as f:
            first = f.readline().split()
        return int(next(field for field in first if field.startswith("total="))[6:])
    except (OSError, StopIteration, ValueError):
        return None


def allowed_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class CpuThreads:
    """Chooses torch's thread count between steps (see the module's docstring).

    ``fixed``: a thread count to keep (no adapting); None adapts. ``read_stall`` and ``clock`` are the
    pressure reader and the monotonic clock (tests give their own)."""

    def __init__(self, fixed: int | None = None, *, read_stall=cpu_stall_us, clock=time.monotonic):
        self.most = fixed or allowed_cores()
        self.read_stall, self.clock = read_stall, clock
        self.adaptive = fixed is None and self.most > 1 and read_stall() is not None
        self.threads = self.most
        torch.set_num_threads(self.threads)
        self._since, self._stall0, self._hold_until = clock(), read_stall() if self.adaptive else None, 0.0

    def adjust(self) -> int:
        """Called before each step: the thread count for it."""
        if not self.adaptive:
            return self.threads
        now = self.clock()
        if now - self._since < WINDOW:
            return self.threads
        stall = self.read_stall()
        if stall is None:
            return self.threads
        pressure = (stall - self._stall0) / 1e6 / (now - self._since)
        self._since, self._stall0 = now, stall
        wanted = self.threads
        if self.threads > 1 and pressure > HIGH:
            wanted, self._hold_until = 1, now + HOLD
        elif self.threads == 1 and pressure < LOW and now >= self._hold_until:
            wanted = self.most
        if wanted != self.threads:
            log.info("jupyter-tt engine: CPU pressure %.0f%%: %d thread(s) for torch", pressure * 100, wanted)
            self.threads = wanted
            torch.set_num_threads(wanted)
        return self.threads
