"""Idle devices go to whoever waits: this server's kernels that sit idle on devices another request needs.

Every look (the server's reconcile tick), for each lease of a kernel of this server: if the kernel
is idle (not busy, no message for ``timeout`` seconds; jupyter_server's ``execution_state`` and
``last_activity``, which every execution, output and comm message renews) and a waiting request
could be placed with its devices, the kernel is warned (an ``idle-warning`` lease event, which
JupyterLab shows, and the log). If it is still idle and still needed ``grace`` seconds later, it
is shut down; its lease ends with the reason ``idle, needed by another request`` and how long it
had been idle. Nothing is taken while nobody waits, and activity at any point cancels the warning.

A kernel that serves a model (``serve()`` starts the model server as its child, whatever the engine)
is busy while that server works, though the kernel itself sends no message: ``ServingActivity``
watches the CPU time of each kernel's child processes, and a kernel whose children used CPU since
the last look counts as active then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psutil

from ..scheduler import Lease, Waiting
from ..scheduler.placement import ANY


@dataclass(frozen=True, kw_only=True)
class IdleKernel:
    """What the reclaimer needs of a kernel: whether it is busy and since when it has been quiet."""

    kernel_id: str
    busy: bool
    idle_for: float  # seconds since its last message


@dataclass(frozen=True, kw_only=True)
class IdleAction:
    """``warn`` the kernel of ``lease`` or ``take`` its devices (shut it down), and why."""

    kind: str  # "warn" or "take"
    lease: Lease
    idle_for: float
    reason: str


@dataclass
class IdleReclaimer:
    timeout: float
    grace: float
    warned: dict[str, float] = field(default_factory=dict)  # lease id -> when it was warned (monotonic)

    def decide(self, leases: list[Lease], kernels: dict[str, IdleKernel], queue: list[Waiting], free: dict[str, int],
               now: float | None = None) -> list[IdleAction]:
        """The warnings and shutdowns due now. ``free``: free healthy devices by card type. Pure but for ``warned``."""
        now = time.monotonic() if now is None else now
        actions, seen = [], set()
        for lease in leases:
            kernel = kernels.get(lease.kernel_id or "")
            if kernel is None:
                continue  # not a kernel of this server
            seen.add(lease.id)
            if kernel.busy or kernel.idle_for < self.timeout or not _needed(lease, queue, free):
                self.warned.pop(lease.id, None)
                continue
            warned_at = self.warned.get(lease.id)
            if warned_at is None:
                self.warned[lease.id] = now
                actions.append(IdleAction(kind="warn", lease=lease, idle_for=kernel.idle_for,
                                          reason=f"idle for {kernel.idle_for:.0f} s while another request waits for its devices: "
                                                 f"shut down in {self.grace:.0f} s unless it runs something"))
            elif now - warned_at >= self.grace:
                self.warned.pop(lease.id)
                actions.append(IdleAction(kind="take", lease=lease, idle_for=kernel.idle_for,
                                          reason=f"idle, needed by another request (idle for {kernel.idle_for:.0f} s)"))
        for lease_id in set(self.warned) - seen:
            del self.warned[lease_id]
        return actions


def _needed(lease: Lease, queue: list[Waiting], free: dict[str, int]) -> bool:
    """Whether some waiting request could be placed if this lease's devices were free (one over its
    user's quota could not: it waits for their own leases to end)."""
    for waiting in queue:
        if waiting.over_quota:
            continue
        types = set(lease.card_types) if waiting.card_type == ANY else {waiting.card_type} & set(lease.card_types)
        for card_type in types:
            mine = sum(1 for d in lease.devices if d.card_type == card_type)
            if waiting.devices <= mine + free.get(card_type, 0):
                return True
    return False


class ServingActivity:
    """When each kernel's child processes (the model servers its ``serve()`` started) last did work.

    ``sample`` reads their CPU time (psutil, the whole tree below the kernel's process); a kernel whose
    children used more than ``min_cpu`` seconds of it since the last look was active at this look. It
    reads ``/proc``: call it in a worker thread (``scheduler.call``), never on the event loop."""

    def __init__(self, min_cpu: float = 0.05):
        self.min_cpu = min_cpu
        self._seen: dict[int, tuple[float, float | None]] = {}  # kernel pid -> (children's CPU s, when it last grew)

    def sample(self, pids: dict[str, int], now: float | None = None) -> dict[str, float]:
        """Kernel id -> seconds since its children last worked, for the kernels whose children were seen to."""
        now = time.monotonic() if now is None else now
        since: dict[str, float] = {}
        for kernel_id, pid in pids.items():
            cpu = _children_cpu(pid)
            before = self._seen.get(pid)
            grew_at = before[1] if before else None
            if before is not None and cpu - before[0] > self.min_cpu:
                grew_at = now
            self._seen[pid] = (cpu, grew_at)
            if grew_at is not None:
                since[kernel_id] = now - grew_at
        for pid in set(self._seen) - set(pids.values()):  # kernels gone: bounded by the live ones
            del self._seen[pid]
        return since


def _children_cpu(pid: int) -> float:
    """CPU seconds (user and system) used so far by the processes below ``pid``, those alive now."""
    total = 0.0
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return total
    for child in children:
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def idle_kernel(kernel_id: str, kernel, serving_for: float | None = None) -> IdleKernel:
    """From a jupyter_server kernel manager's kernel (``execution_state``, ``last_activity`` in UTC);
    ``serving_for``: seconds since its model servers last worked (``ServingActivity``), if they did."""
    last = getattr(kernel, "last_activity", None)
    idle_for = (datetime.now(timezone.utc) - last).total_seconds() if last else 0.0
    if serving_for is not None:
        idle_for = min(idle_for, serving_for)
    # "starting" stays until a client asks the kernel something: quiet since then, not busy.
    state = getattr(kernel, "execution_state", "idle")
    return IdleKernel(kernel_id=kernel_id, busy=state in ("busy", "restarting", "autorestarting"), idle_for=idle_for)
