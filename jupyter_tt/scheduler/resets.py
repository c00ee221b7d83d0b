"""Resets after a crash: a card whose holder died (killed, or crashed) is reset before anyone uses it
again, and comes back to the pool only once its firmware heartbeat advances.

The lifecycle of a card out for a reset (one ``resets`` row): marked when its lease's holder dies
(``mark``); reset by the vendor's tool outside any lock, never while some process holds its node
open (``run``); then back once its heartbeat changed, or unhealthy with why if it did not within the
verify timeout (``check``). ``jupyter tt reset`` runs a failed one again (``store.set_reset``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping

from ..devices import Device
from . import store
from .leases import PendingReset
from .processes import holder_name
from .reset import reset as reset_card

log = logging.getLogger("jupyter_tt.scheduler")


def mark(db: sqlite3.Connection, row: store.LeaseRow, reason: str, *, now: float) -> None:
    """``row``'s cards go out of the pool until they are reset (``reason``: how its holder ended)."""
    store.mark_for_reset(db, [d["id"] for d in row.devices()], lease_id=row.id, reason=reason, since=now)


def check(db: sqlite3.Connection, heartbeats: Callable[[], Mapping[int, int | None]], *, now: float,
          verify_timeout: float) -> None:
    """Cards reset since the last look: back to the pool once their heartbeat changed, unhealthy if it
    did not within ``verify_timeout`` seconds. ``now`` is monotonic, as the rows' ``done_at``."""
    done = [r for r in store.resets(db) if r.done_at is not None and r.failed is None]
    if not done:
        return
    beats = heartbeats()
    for row in done:
        beat = beats.get(row.device_id)
        if beat is not None and beat != row.heartbeat:
            store.end_reset(db, row.device_id)
            log.info("jupyter-tt: device %d is back in the pool after its reset", row.device_id)
        elif row.done_at is not None and now - row.done_at > verify_timeout:
            store.fail_reset(db, row.device_id, (
                f"reset after {row.reason}, but its firmware heartbeat did not advance within {verify_timeout:g} s: "
                f"check the card, then `jupyter tt reset {row.device_id}` tries again"))


def run(pending: list[int], devices: Mapping[int, Device], *, tool: str, record: Callable[..., object],
        heartbeat: Callable[[int], int | None], now: Callable[[], float]) -> list[int]:
    """Reset the ``pending`` cards whose nodes nobody holds; returns the ones reset. Takes seconds a card:
    run it outside the scheduler's lock. ``record(device_id, **result)`` stores where each stands,
    ``heartbeat(device_id)`` reads a card's heartbeat just after its reset."""
    done = []
    for device_id in pending:
        device = devices.get(device_id)
        if device is None:
            record(device_id, failed="the device is gone from the inventory")
            continue
        if device.holders:  # never under someone's open node: the reset would pull the card from under them
            holders = ", ".join(holder_name(pid) for pid in device.holders)
            record(device_id, waiting_for=f"{holders} hold{'s' * (len(device.holders) == 1)} its node")
            continue
        error = reset_card(device_id, tool, bdf=device.bdf)  # the tool sees this card only
        if error:
            log.error("jupyter-tt: could not reset device %d: %s", device_id, error)
            record(device_id, failed=f"could not reset it after its holder died: {error}")
            continue
        record(device_id, done_at=now(), heartbeat=heartbeat(device_id))
        done.append(device_id)
    return done


def pending(rows: list[store.ResetRow]) -> list[PendingReset]:
    """A lease's cards still out for a reset, as its kernel's restart waits on them."""
    return [PendingReset(device_id=r.device_id, reason=r.reason, waiting_for=r.waiting_for, done=r.done_at is not None,
                         failed=r.failed) for r in rows]
