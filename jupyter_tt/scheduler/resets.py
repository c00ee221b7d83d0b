"""Resets after a crash: a card whose holder died (killed, or crashed) is reset before anyone uses it
again, and comes back to the pool only once its firmware heartbeat advances.

The lifecycle of a card out for a reset (one ``resets`` row): marked when its lease's holder dies
(``mark``); reset by the vendor's tool outside any lock, never while some process holds its node
open, its holders read again just before (``run``); then back once its firmware heartbeat took two
new values after the reset (``BEATS``: a card whose sysfs was not back when first read, or whose
firmware is frozen at another value, shows one change at most), or unhealthy with why if not within
the verify timeout (``check``). The heartbeat compared with is read before the reset.
``jupyter tt reset`` runs a failed one again (``store.set_reset``).

While a card is out for a reset its node belongs to root (the service's fence), not to the lessee
whose kernel restarts on it: none of the user's other processes can open it under the reset.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from ..devices import Device
from . import store
from .leases import PendingReset
from .processes import holder_name
from .reset import reset as reset_card

log = logging.getLogger("jupyter_tt.scheduler")

#: New heartbeat values a card must show after its reset before it returns to the pool.
BEATS = 2
#: Seconds a card linked to others by Ethernet (the n300 cards of a LoudBox) may take to beat again after a
#: reset: its links train again, 40-180 s while the neighbours run (tt-system-firmware #1271, as issue 37
#: reports it); a lone card's firmware is back in seconds (``reset_verify_timeout``).
LINKED_VERIFY_TIMEOUT = 300.0


def verify_timeout_for(device: Device | None, devices: list[Device], base: float,
                       linked: float = LINKED_VERIFY_TIMEOUT) -> float:
    """How long ``device`` gets to beat again after a reset: ``linked`` where other n300 cards share its host
    (a LoudBox links its four n300 by Ethernet), ``base`` otherwise."""
    if device is not None and device.card_type == "n300" and sum(d.card_type == "n300" for d in devices) > 1:
        return max(base, linked)
    return base


def mark(db: sqlite3.Connection, row: store.LeaseRow, reason: str, *, now: float) -> None:
    """``row``'s cards go out of the pool until they are reset (``reason``: how its holder ended)."""
    store.mark_for_reset(db, [d["id"] for d in row.devices()], lease_id=row.id, reason=reason, since=now)


def check(db: sqlite3.Connection, devices: Callable[[], list[Device]], *, now: float, verify_timeout: float,
          verify_linked: float = LINKED_VERIFY_TIMEOUT) -> None:
    """Cards reset since the last look: back to the pool once their heartbeat took ``BEATS`` new values,
    unhealthy if not within their verify timeout (``verify_timeout``, or minutes for a card linked to
    others: ``verify_timeout_for``). ``now`` is monotonic, as the rows' ``done_at``."""
    done = [r for r in store.resets(db) if r.done_at is not None and r.failed is None]
    if not done:
        return
    seen = devices()
    by_id = {d.id: d for d in seen}
    for row in done:
        device = by_id.get(row.device_id)
        beat = device.telemetry.heartbeat if device else None
        beats = row.beats
        if beat is not None and beat != row.heartbeat:
            store.note_beat(db, row.device_id, beat)
            beats += 1
        limit = verify_timeout_for(device, seen, verify_timeout, verify_linked)
        if beats >= BEATS:
            store.end_reset(db, row.device_id)
            log.info("jupyter-tt: device %d is back in the pool after its reset", row.device_id)
        elif row.done_at is not None and now - row.done_at > limit:
            store.fail_reset(db, row.device_id, (
                f"reset after {row.reason}, but its firmware heartbeat did not advance within {limit:g} s: "
                f"check the card, then `jupyter tt reset {row.device_id}` tries again"))


def run(pending: list[int], read: Callable[[int], Device | None], *, tool: str, record: Callable[..., object],
        now: Callable[[], float]) -> list[int]:
    """Reset the ``pending`` cards whose nodes nobody holds; returns the ones reset. Takes seconds a card:
    run it outside the scheduler's lock. ``read(device_id)`` reads a card afresh, just before its reset (its
    holders, and the heartbeat the reset is judged against: an earlier card's reset may have taken
    minutes); ``record(device_id, **result)`` stores where each stands."""
    done = []
    for device_id in pending:
        device = read(device_id)
        if device is None:
            record(device_id, failed="the device is gone from the inventory")
            continue
        if device.holders:  # never under someone's open node: the reset would pull the card from under them
            holders = ", ".join(holder_name(pid) for pid in device.holders)
            record(device_id, waiting_for=f"{holders} hold{'s' * (len(device.holders) == 1)} its node")
            continue
        if device.containers:  # nor under a container given it (it may open it at any moment)
            record(device_id, waiting_for=f"container {', '.join(device.containers)} was given it")
            continue
        error = reset_card(device_id, tool, bdf=device.bdf)  # the tool sees this card only
        if error:
            log.error("jupyter-tt: could not reset device %d: %s", device_id, error)
            record(device_id, failed=f"could not reset it after its holder died: {error}")
            continue
        record(device_id, done_at=now(), heartbeat=device.telemetry.heartbeat)  # as it was before the reset
        done.append(device_id)
    return done


def pending(rows: list[store.ResetRow]) -> list[PendingReset]:
    """A lease's cards still out for a reset, as its kernel's restart waits on them."""
    return [PendingReset(device_id=r.device_id, reason=r.reason, waiting_for=r.waiting_for, done=r.done_at is not None,
                         failed=r.failed) for r in rows]
