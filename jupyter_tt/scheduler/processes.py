"""Is the process behind a lease still the same live process?

A PID alone is not enough: PIDs are reused. A process is named by (pid, start time, boot), where
the start time is the kernel's count of clock ticks since boot (``/proc/<pid>/stat``, field 22).
Neither changes when the wall clock steps: psutil's ``create_time()`` does (it adds the boot time,
which the kernel derives from the wall clock), so a clock step of a second once ended every lease.

Where ``/proc`` hides another user's process (``hidepid``), ``kill(pid, 0)`` still tells whether
the PID exists and a pidfd whether it has exited: such a process counts as alive until it exits (its
start time cannot be checked, so a reused PID keeps the lease until it exits too). A zombie (killed,
not yet reaped) counts as gone.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from pathlib import Path

import psutil


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


#: This boot. A process recorded in another boot is gone, whatever its PID is now.
BOOT_ID = _read_boot_id()


def start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of ``pid``; None where ``/proc`` does not show it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]), fields[0]


def exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (of any user: ``kill(pid, 0)`` needs no permission to tell)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # 0 and negative numbers name process groups to kill()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exited(pid: int) -> bool | None:
    """Whether ``pid`` has exited (a zombie has), asked of the kernel through a pidfd, which needs no
    /proc; None where pidfds are not available."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        return None
    try:
        return bool(select.select([fd], [], [], 0)[0])  # a pidfd turns readable when its process exits
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    started: int  # clock ticks since boot; 0 where /proc did not show it
    boot_id: str = BOOT_ID

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        """The process ``pid`` now; ``psutil.NoSuchProcess`` if there is none."""
        if not exists(pid):
            raise psutil.NoSuchProcess(pid)
        stat = start_ticks(pid)
        return cls(pid, stat[0] if stat else 0)

    @classmethod
    def current(cls) -> "ProcessRef":
        return cls.of(os.getpid())

    def alive(self) -> bool:
        if self.boot_id != BOOT_ID or not exists(self.pid):
            return False
        stat = start_ticks(self.pid)
        if stat is None:  # hidden by hidepid, or denied: it exists; only whether it has exited can be known
            return not exited(self.pid)
        ticks, state = stat
        return (ticks == self.started or not self.started) and state not in ("Z", "X")


def uid_of(pid: int) -> int | None:
    """The real uid of process ``pid``; None where ``/proc`` does not show it."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def lineage(pid: int) -> set[int]:
    """``pid`` and its ancestors (empty if it is gone)."""
    try:
        process = psutil.Process(pid)
        return {pid, *(p.pid for p in process.parents())}
    except psutil.Error:
        return set()


#: tt-kmd lists a holder the reader cannot see, one in another PID namespace (a container), as pid 0
#: (ttkmd-2.7.0, commit f53b9cd: ``pid_vnr`` in ``enumerate.c`` ``pids_proc_show``).
OTHER_NAMESPACE = 0
ELSEWHERE = "a process in another PID namespace (a container?)"


def holder_name(pid: int) -> str:
    """A holder of a device node, in words: ``process N``, or one this host's namespace cannot name."""
    return ELSEWHERE if pid == OTHER_NAMESPACE else f"process {pid}"


def describe(pid: int) -> dict:
    """Who a PID is, for reports of processes that hold a device without a lease."""
    if pid == OTHER_NAMESPACE:
        return {"pid": pid, "name": ELSEWHERE, "user": None, "cmdline": None}
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return {"pid": pid, "name": process.name(), "user": process.username(), "cmdline": " ".join(process.cmdline())[:200]}
    except psutil.Error:
        return {"pid": pid, "name": None, "user": None, "cmdline": None}
