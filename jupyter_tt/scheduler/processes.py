"""Is the process behind a lease still the same live process?

A PID alone is not enough: PIDs are reused. A process is named by (pid, start time), and a zombie
(killed, not yet reaped by its parent) counts as gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        """The process ``pid`` now; ``psutil.NoSuchProcess`` if there is none."""
        return cls(pid, psutil.Process(pid).create_time())

    @classmethod
    def current(cls) -> "ProcessRef":
        return cls.of(os.getpid())

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return abs(process.create_time() - self.started) < 0.05 and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def lineage(pid: int) -> set[int]:
    """``pid`` and its ancestors (empty if it is gone)."""
    try:
        process = psutil.Process(pid)
        return {pid, *(p.pid for p in process.parents())}
    except psutil.Error:
        return set()


def describe(pid: int) -> dict:
    """Who a PID is, for reports of processes that hold a device without a lease."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return {"pid": pid, "name": process.name(), "user": process.username(), "cmdline": " ".join(process.cmdline())[:200]}
    except psutil.Error:
        return {"pid": pid, "name": None, "user": None, "cmdline": None}
