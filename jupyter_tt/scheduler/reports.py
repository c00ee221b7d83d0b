"""What the scheduler reports, built from the state's rows: each device's state and holder, pages of
the history and of usage, and what other users may see of them.

``viewer``: the user a report is for. Their own leases come in full, other users' in their public
view (no kernel ids, notebook paths or processes; end reasons without process ids). None: everything
(personal mode, root).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from ..devices import Device
from ..errors import RequestError
from . import store
from .leases import DeviceState, DeviceStatus, HeldOpen, Lease, Page, ResetStatus, UsageRecord
from .processes import describe, lineage

_PID_IN_PARENS = re.compile(r"\([^()]*\bpid\b[^()]*\)")
_PIDS = re.compile(r"\b(pid|process(?:es)?)\s+\d[\d, ]*")

#: The most entries one page of a list holds (history, usage records).
MAX_PAGE = 1000


def check_limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise RequestError(f"limit must be a whole number from 1 to {MAX_PAGE}, not {limit!r}: page through longer lists")
    return limit


def cursor(when: float, lease_id: str) -> str:
    return f"{when!r}/{lease_id}"


def parse_cursor(value: object) -> tuple[float, str]:
    try:
        when, lease_id = str(value).split("/", 1)
        return float(when), lease_id
    except ValueError:
        raise RequestError(f"{str(value)[:80]!r} is not a cursor: pass the one the previous page gave") from None


def public_reason(reason: str | None) -> str | None:
    """An end reason as other users see it: without process ids or what a process ran."""
    if reason is None:
        return None
    reason = _PID_IN_PARENS.sub("", reason)
    return _PIDS.sub(r"\1 ", reason).replace("  ", " ").strip()


def shown(lease: Lease, viewer: str | None) -> Lease:
    return lease if viewer is None or lease.user == viewer else lease.public()


def device_states(devices: list[Device], leases: list[store.LeaseRow], resets: Mapping[int, store.ResetRow], *,
                  viewer: str | None) -> list[DeviceState]:
    """Every device with its state (free, leased, resetting, unhealthy), holder, and unaccounted processes."""
    pairs = [(row, row.lease()) for row in leases]
    by_device = {d.id: (row, lease) for row, lease in pairs for d in lease.devices}
    states = []
    for device in devices:
        row, lease = by_device.get(device.id, (None, None))
        covered = {p for p in (row.owner_pid, row.kernel_pid) if p} if row else set()  # who may hold the node
        unaccounted = [HeldOpen(**describe(pid)) for pid in device.holders if not (lineage(pid) & covered)]
        if viewer is not None:  # that another user holds a node is shown; their process, to root only
            unaccounted = [p.hidden() if p.user != viewer else p for p in unaccounted]
        seen = lease and shown(lease, viewer)
        reset = resets.get(device.id)
        if reset and reset.failed:
            device = replace(device, problem=reset.failed)
        state = (DeviceStatus.UNHEALTHY if not device.healthy else DeviceStatus.RESETTING if reset
                 else DeviceStatus.LEASED if lease else DeviceStatus.FREE)
        states.append(DeviceState(
            device=device,
            state=state,
            held_outside=not lease and device.held_outside,
            reset=None if not reset else ResetStatus(reason=reset.reason, waiting_for=reset.waiting_for,
                                                     failed=reset.failed, done=reset.done_at is not None),
            lease_id=lease.id if lease else None,
            user=lease.user if lease else None,
            kernel_id=seen.kernel_id if seen else None,
            notebook=seen.notebook if seen else None,
            unaccounted_processes=tuple(unaccounted),
        ))
    return states


def history_page(rows: list[store.HistoryRow], *, limit: int, viewer: str | None) -> Page:
    """A page of ended leases (newest first), with the cursor of the next."""
    entries = []
    for r in rows:
        entry = {**r.columns(), "devices": [d["id"] for d in r.devices()]}
        if viewer is not None and r.user != viewer:  # nor who ended it: a reason may name processes
            entry.update(server="", kernel_id=None, notebook=None, pid=None, end_reason=public_reason(r.end_reason))
        entries.append(entry)
    last = rows[-1] if rows and len(rows) == limit else None
    return Page(items=entries, next=cursor(last.ended_at, last.lease_id) if last else None)


def usage_page(rows: list[store.UsageRow], *, since: float, limit: int, now: float) -> Page:
    """A page of usage records (oldest grant first): each lease's device- and chip-hours after ``since``."""
    records = []
    for row in rows:
        devices = row.devices()
        hours = max((row.ended_at or now) - max(row.granted_at, since), 0.0) / 3600.0
        chips = sum(d["chips"] for d in devices)
        records.append(UsageRecord(
            lease_id=row.lease_id, user=row.user, card_type=row.card_type, devices=tuple(d["id"] for d in devices),
            chips=chips, granted_at=row.granted_at, ended_at=row.ended_at, end_reason=row.end_reason,
            device_hours=len(devices) * hours, chip_hours=chips * hours,
        ))
    last = rows[-1] if rows and len(rows) == limit else None
    return Page(items=records, next=cursor(last.granted_at, last.lease_id) if last else None)
