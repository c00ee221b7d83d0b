"""The host-wide scheduler: leases, the fair queue, and reclaiming what dead processes held.

Every call runs in one SQLite transaction (see ``store.py``); a *pass* inside it first ends the
leases whose processes are gone, then grants waiting requests in fair order. Any process's pass
serves everyone's requests, so a waiter only has to look again to find out it was granted.

Liveness: a lease follows its kernel process once launched, and the process that asked for it
(the Jupyter server) before that and between restarts. It ends when both are gone, or when the
kernel has been gone for ``restart_grace`` seconds and its server did not start a new one.

Who asks: each call acts for a ``Caller`` (user, process, quota). In personal mode that is this
process, from the constructor; the scheduler service passes the caller it learned from the
socket's peer credentials, and the scheduler checks that requests, leases and details belong to it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..devices import Device, InventoryBackend
from ..errors import LeaseError, RequestError
from ..text import clean_label
from . import store
from .api import SchedulerAPI
from .leases import Caller, DeviceRequest, Lease, LeasedDevice, Page, PendingReset, UsageRecord, Waiting, usage_totals
from .placement import ANY, check_card_type, most_at_once
from .processes import BOOT_ID, ProcessRef, describe, lineage
from .queue import Ask, Plan, plan
from .reset import reset as reset_card

log = logging.getLogger("jupyter_tt.scheduler")

#: The longest kernel id or notebook path a request may carry (they are labels, shown in reports).
MAX_LABEL = 256
#: Seconds between prunings of the history (``Scheduler.prune``).
PRUNE_INTERVAL = 60.0
#: The longest end reason stored (a release's reason, a crash's account).
MAX_REASON = 300


#: The most entries one page of a list holds (history, usage records).
MAX_PAGE = 1000


def check_limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise RequestError(f"limit must be a whole number from 1 to {MAX_PAGE}, not {limit!r}: page through longer lists")
    return limit


def _cursor(when: float, lease_id: str) -> str:
    return f"{when!r}/{lease_id}"


def _parse_cursor(cursor: object) -> tuple[float, str]:
    try:
        when, lease_id = str(cursor).split("/", 1)
        return float(when), lease_id
    except ValueError:
        raise RequestError(f"{str(cursor)[:80]!r} is not a cursor: pass the one the previous page gave") from None


def _public_reason(reason: str | None) -> str | None:
    """An end reason as other users see it: without process ids or what a process ran."""
    if reason is None:
        return None
    reason = re.sub(r"\([^()]*\bpid\b[^()]*\)", "", reason)
    return re.sub(r"\b(pid|process(?:es)?)\s+\d[\d, ]*", r"\1 ", reason).replace("  ", " ").strip()


def _raised(outcome: Lease | Waiting | RequestError) -> Lease | Waiting:
    if isinstance(outcome, RequestError):
        raise outcome
    return outcome


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _ref(pid, started, boot) -> ProcessRef:
    """A stored process. Rows written before boot ids were stored (schema 2) hold a wall-clock start
    time: only the PID's existence can be checked for those."""
    if boot is None:
        return ProcessRef(int(pid), 0, BOOT_ID)
    return ProcessRef(int(pid), int(started), boot)


def _serialized(method):
    """One call at a time per Scheduler: its SQLite connection is shared by the threads of this process
    (an event loop's worker threads); other processes are kept out by SQLite and the ``flock``."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _label(value: str | None, what: str, *, truncate: bool = False) -> str | None:
    """A label as stored: without control characters; over MAX_LABEL characters, refused (an id) or
    shortened to its end (``truncate``: a notebook path keeps its file name)."""
    if value is None:
        return None
    if not isinstance(value, str) or (len(value) > MAX_LABEL and not truncate):
        raise RequestError(f"{what} must be a string of at most {MAX_LABEL} characters")
    return clean_label(value, MAX_LABEL)


def clean_reason(reason: str) -> str:
    """An end reason as stored (callers give some of it): one line, at most MAX_REASON characters."""
    return clean_label(str(reason), MAX_REASON)


class Scheduler(SchedulerAPI):
    """Leases devices of one inventory to processes of this host; the only owner of the state's storage.

    ``user`` is whom this process asks for by default; ``quota`` the most devices that user may hold
    at once (0: no limit). The scheduler service calls the same methods with an explicit ``caller``.
    """

    poll_interval = 0.2  # seconds between a waiter's looks at the queue
    inventory_ttl = 1.0  # seconds a device list is reused by scheduling passes

    def __init__(
        self,
        inventory: InventoryBackend,
        state_dir: str,
        *,
        user: str,
        quota: int = 0,
        restart_grace: float = 15.0,
        server: str | None = None,
        mode: str = "personal",
        max_waiting: int = 0,
        reset_after_crash: bool = False,
        reset_tool: str = "auto",
        reset_verify_timeout: float = 30.0,
        history_days: float = 90.0,
        history_rows: int = 100_000,
    ):
        self.inventory = inventory
        self.state_dir = str(state_dir)
        self.user = user
        self.quota = quota
        self.restart_grace = restart_grace
        self.server = server or f"{socket.gethostname()}:{os.getpid()}"
        self.mode = mode
        #: Most requests one user may have waiting at once (0: no limit; the service sets one).
        self.max_waiting = max_waiting
        #: Reset a card before anyone uses it again when its holder died (killed or crashed) rather
        #: than released it; ``run_resets`` does it, a card's heartbeat must then advance again.
        self.reset_after_crash = reset_after_crash and not inventory.simulated
        self.reset_tool = reset_tool
        self.reset_verify_timeout = reset_verify_timeout
        #: How long, and how many, ended leases the history keeps (``prune``; 0 days: for ever).
        self.history_days, self.history_rows = history_days, history_rows
        self._pruned = float("-inf")
        self._lock = threading.RLock()
        self._inventory_lock = threading.Lock()  # shared with ``reader()``: the inventory keeps health memory
        self.db = store.connect(state_dir, inventory.key)
        self._me: ProcessRef | None = None
        #: Called after a transaction of this process changed the state (the server emits events then).
        self.listeners: list[Callable[[], None]] = []
        self._devices: tuple[float, list[Device]] = (float("-inf"), [])

    @property
    def me(self) -> ProcessRef:
        # Looked up lazily and per PID: a forked child must not inherit its parent's identity.
        if self._me is None or self._me.pid != os.getpid():
            self._me = ProcessRef.current()
        return self._me

    def _caller(self, caller: Caller | None) -> Caller:
        return caller or Caller(self.user, self.me, self.quota, self.server)

    @_serialized
    def devices(self, fresh: bool = False) -> list[Device]:
        when, devices = self._devices
        now = time.monotonic()
        if fresh or now - when > self.inventory_ttl:
            with self._inventory_lock:
                devices = self.inventory.devices()
            self._devices = (now, devices)
        return devices

    def reader(self) -> Scheduler:
        """Another handle on the same state for reports: its own SQLite connection (query-only) and
        lock, so that a long read runs beside lease operations (WAL lets it) and never holds one up.
        Only the scheduler service uses it; writing through it fails."""
        view = copy.copy(self)
        view._lock = threading.RLock()
        view.db = store.connect(self.state_dir, self.inventory.key, query_only=True)
        view.listeners = []
        view._devices = (float("-inf"), [])
        return view

    # ------------------------------------------------------------------ requests

    @_serialized
    def submit(
        self, count: int, card_type: str = ANY, *, kernel_id: str | None = None, notebook: str | None = None,
        caller: Caller | None = None,
    ) -> Lease | Waiting:
        """Ask for ``count`` devices of ``card_type``: the lease if granted now, else the queue position.

        Raises RequestError at once for a request that can never be met.
        """
        who = self._caller(caller)
        card_type = self._check_request(count, card_type, who)
        kernel_id, notebook = _label(kernel_id, "kernel_id"), _label(notebook, "notebook", truncate=True)
        request_id = _new_id("req")
        now = time.time()
        with self._write() as db:
            held = self._held_by(db, who.user)
            if who.quota and held + count > who.quota:
                raise RequestError(
                    f"{who.user} holds {held} device{'s' * (held != 1)} and may hold {who.quota} at once: "
                    f"a request for {count} more is over the quota. Shut down a kernel that holds devices, "
                    f"or ask for at most {max(who.quota - held, 0)}"
                )
            if self.max_waiting:
                waiting = db.execute("SELECT COUNT(*) FROM requests WHERE user=? AND lease_id IS NULL AND refused IS NULL",
                                     (who.user,)).fetchone()[0]
                if waiting >= self.max_waiting:
                    raise RequestError(f"{who.user} has {waiting} requests waiting already: wait for them, or cancel some")
            db.execute(
                "INSERT INTO requests (id, user, server, kernel_id, notebook, devices, card_type, quota, owner_pid,"
                " owner_started, owner_boot, requested_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (request_id, who.user, who.server, kernel_id, notebook, count, card_type, who.quota, who.process.pid,
                 who.process.started, who.process.boot_id, now),
            )
            self._pass(db)
            outcome = self._outcome(db, request_id)
        return _raised(outcome)

    @_serialized
    def check(self, request_id: str, *, caller: Caller | None = None) -> Lease | Waiting:
        """Look again at a waiting request (running a pass): its lease, or where it stands now."""
        with self._write() as db:
            self._own_request(db, request_id, caller)
            self._pass(db)
            outcome = self._outcome(db, request_id)
        return _raised(outcome)

    @_serialized
    def cancel(self, request_id: str, *, caller: Caller | None = None) -> Lease | None:
        """Leave the queue. If the request was granted meanwhile, the lease is returned (and kept)."""
        with self._write() as db:
            row = self._own_request(db, request_id, caller)
            db.execute("DELETE FROM requests WHERE id=?", (request_id,))
            lease = self._lease(db, row["lease_id"]) if row and row["lease_id"] else None
            self._pass(db)  # others may go now
            return lease

    def _own_request(self, db: sqlite3.Connection, request_id: str, caller: Caller | None) -> sqlite3.Row | None:
        row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        if row is not None and caller is not None and row["user"] != caller.user:
            raise LeaseError(f"request {request_id} is not yours", status=403)
        return row

    # ------------------------------------------------------------------ leases

    @_serialized
    def release(self, lease_id: str, *, reason: str = "released", user: str | None = None, crash: str | None = None) -> bool:
        """End a lease. With ``user``, only that user's lease may be ended (LeaseError otherwise).
        ``crash``: how its kernel ended abnormally; with ``reset_after_crash`` its cards are reset
        before anyone else leases them.

        Returns False when the lease had already ended.
        """
        with self._write() as db:
            row = db.execute("SELECT * FROM leases WHERE id=?", (lease_id,)).fetchone()
            if row is None:
                if user is not None:
                    raise LeaseError(f"no active lease {lease_id!r}: it has ended or never existed", status=404)
                return False
            if user is not None and row["user"] != user:
                raise LeaseError(f"lease {lease_id} belongs to {row['user']}: only they can release it", status=403)
            self._end(db, row, reason, time.time())
            if crash:
                self._mark_for_reset(db, row, crash)
            self._pass(db)
            return True

    @_serialized
    def attach_kernel(self, lease_id: str, pid: int, *, caller: Caller | None = None) -> None:
        """From now on the lease follows kernel process ``pid``."""
        ref = ProcessRef.of(pid)
        with self._write() as db:
            self._own_lease(db, lease_id, caller)
            db.execute(
                "UPDATE leases SET kernel_pid=?, kernel_started=?, kernel_boot=?, kernel_gone_since=NULL WHERE id=?",
                (ref.pid, ref.started, ref.boot_id, lease_id),
            )

    @_serialized
    def detach_kernel(self, lease_id: str, *, crash: str | None = None, caller: Caller | None = None) -> bool:
        """The kernel is being restarted: the lease follows the caller's process until the next attach.
        ``crash``: how the kernel ended abnormally; with ``reset_after_crash`` the lease's cards are
        reset first, and the caller waits for ``lease_resets`` to be empty before it starts the kernel.

        Returns False when the lease has ended meanwhile (reclaimed): the caller must ask again.
        """
        who = self._caller(caller)
        with self._write() as db:
            self._own_lease(db, lease_id, caller)
            cursor = db.execute(
                "UPDATE leases SET kernel_pid=NULL, kernel_started=NULL, kernel_boot=NULL, kernel_gone_since=NULL,"
                " owner_pid=?, owner_started=?, owner_boot=? WHERE id=?",
                (who.process.pid, who.process.started, who.process.boot_id, lease_id),
            )
            if cursor.rowcount == 1 and crash:
                self._mark_for_reset(db, db.execute("SELECT * FROM leases WHERE id=?", (lease_id,)).fetchone(), crash)
            return cursor.rowcount == 1

    @_serialized
    def lease_resets(self, lease_id: str, *, caller: Caller | None = None) -> list[PendingReset]:
        """The lease's cards still out for a reset (empty: its kernel may start)."""
        with store.snapshot(self.db) as db:
            self._own_lease(db, lease_id, caller)
            rows = db.execute("SELECT resets.* FROM resets JOIN lease_devices USING (device_id) WHERE lease_devices.lease_id=?"
                              " ORDER BY device_id", (lease_id,)).fetchall()
        return [PendingReset(device_id=r["device_id"], reason=r["reason"], waiting_for=r["waiting_for"],
                             done=r["done_at"] is not None, failed=r["failed"]) for r in rows]

    @_serialized
    def get_lease(self, lease_id: str, *, viewer: str | None = None) -> Lease | None:
        """The lease if it is active (another user's in its public view, for a ``viewer``)."""
        lease = self._lease(self.db, lease_id)
        return lease and self._shown(lease, viewer)

    @_serialized
    def ended_lease(self, lease_id: str, *, viewer: str | None = None) -> tuple[Lease, str] | None:
        """An ended lease from the history, with why it ended; None if it never existed (or is active)."""
        row = self.db.execute("SELECT * FROM history WHERE lease_id=?", (lease_id,)).fetchone()
        if row is None:
            return None
        lease = Lease(
            id=row["lease_id"], user=row["user"], server=row["server"], kernel_id=row["kernel_id"],
            card_type=row["card_type"], devices=tuple(LeasedDevice(**d) for d in json.loads(row["devices_json"])),
            pid=row["pid"] or 0, requested_at=row["requested_at"], granted_at=row["granted_at"], notebook=row["notebook"],
        )
        return self._shown(lease, viewer), row["end_reason"]

    def _own_lease(self, db: sqlite3.Connection, lease_id: str, caller: Caller | None) -> None:
        row = db.execute("SELECT user FROM leases WHERE id=?", (lease_id,)).fetchone()
        if row is not None and caller is not None and row["user"] != caller.user:
            raise LeaseError(f"lease {lease_id} belongs to {row['user']}: only they can change it", status=403)

    @staticmethod
    def _shown(lease: Lease, viewer: str | None) -> Lease:
        return lease if viewer is None or lease.user == viewer else lease.public()

    # ------------------------------------------------------------------ reports
    # ``viewer``: the user a report is for. Their own leases and requests come in full, other users'
    # in their public view (no kernel ids, notebook paths, processes). None: everything (personal mode).

    @_serialized
    def reconcile(self) -> list[str]:
        """Run a pass: end leases of dead processes, grant what can be. Returns the ended lease ids.
        Once a minute it also prunes the history (``prune``)."""
        with self._write() as db:
            ended = self._pass(db)
        if time.monotonic() - self._pruned > PRUNE_INTERVAL:
            self.prune()
        return ended

    @_serialized
    def prune(self) -> int:
        """Drop ended leases older than ``history_days`` and beyond the newest ``history_rows``, and give
        their pages back to the file system. Returns how many went."""
        self._pruned = time.monotonic()
        with self._write() as db:
            gone = 0
            if self.history_days > 0:
                gone += db.execute("DELETE FROM history WHERE ended_at < ?", (time.time() - self.history_days * 86400,)).rowcount
            if self.history_rows > 0:
                gone += db.execute("DELETE FROM history WHERE lease_id IN (SELECT lease_id FROM history"
                                   " ORDER BY ended_at DESC, lease_id DESC LIMIT -1 OFFSET ?)", (self.history_rows,)).rowcount
        if gone:
            self.db.execute("PRAGMA incremental_vacuum")
            log.info("jupyter-tt: pruned %d ended leases from the history", gone)
        return gone

    def run_resets(self) -> list[int]:
        """Reset the cards waiting for it whose nodes nobody holds; returns the ones reset.

        The reset runs outside the scheduler's lock (it takes seconds): call this from a thread of its
        own, never from a scheduling pass. The next passes return each card once its heartbeat advances."""
        with self._lock:
            pending = self.db.execute("SELECT device_id FROM resets WHERE done_at IS NULL AND failed IS NULL").fetchall()
            devices = {d.id: d for d in self.devices(fresh=True)} if pending else {}
        done = []
        for (device_id,) in pending:
            device = devices.get(device_id)
            if device is None:
                self._reset_result(device_id, failed="the device is gone from the inventory")
                continue
            if device.holders:  # never under someone's open node: the reset would pull the card from under them
                self._reset_result(device_id, waiting_for=f"process {', '.join(map(str, device.holders))} holds its node")
                continue
            error = reset_card(device_id, self.reset_tool)
            if error:
                log.error("jupyter-tt: could not reset device %d: %s", device_id, error)
                self._reset_result(device_id, failed=f"could not reset it after its holder died: {error}")
                continue
            heartbeat = next((d.telemetry.heartbeat for d in self.devices(fresh=True) if d.id == device_id), None)
            self._reset_result(device_id, done_at=time.monotonic(), heartbeat=heartbeat)
            done.append(device_id)
        return done

    @_serialized
    def _reset_result(self, device_id: int, *, waiting_for: str | None = None, done_at: float | None = None,
                      heartbeat: int | None = None, failed: str | None = None) -> None:
        with self._write() as db:
            db.execute("UPDATE resets SET waiting_for=?, done_at=?, heartbeat=?, failed=? WHERE device_id=?",
                       (waiting_for, done_at, heartbeat, failed, device_id))

    @_serialized
    def retry_reset(self, device_id: int) -> bool:
        """Reset a card again whose reset failed (or that waits for one); False if it needs none."""
        with self._write() as db:
            changed = db.execute("UPDATE resets SET waiting_for=NULL, done_at=NULL, heartbeat=NULL, failed=NULL"
                                 " WHERE device_id=?", (device_id,)).rowcount
        return bool(changed)

    @_serialized
    def resets(self) -> dict[int, dict]:
        """Cards out of the pool for a reset, by device id: lease_id, reason, since, waiting_for, done_at, failed."""
        with store.snapshot(self.db) as db:
            return {r["device_id"]: dict(r) for r in db.execute("SELECT * FROM resets").fetchall()}

    @_serialized
    def followed_pids(self) -> set[int]:
        """Every process a lease or a waiting request follows (the service watches them exit)."""
        with store.snapshot(self.db) as db:
            rows = db.execute("SELECT owner_pid, kernel_pid FROM leases UNION ALL SELECT owner_pid, NULL FROM requests").fetchall()
        return {p for row in rows for p in row if isinstance(p, int) and p > 0}

    @_serialized
    def leases(self, *, viewer: str | None = None) -> list[Lease]:
        rows = self.db.execute("SELECT * FROM leases ORDER BY granted_at, id").fetchall()
        return [self._shown(self._to_lease(r), viewer) for r in rows]

    @_serialized
    def queue(self, *, viewer: str | None = None) -> list[Waiting]:
        with store.snapshot(self.db) as db:
            return [w if viewer is None or w.user == viewer else w.public() for w in self._queue(db)]

    @_serialized
    def history_page(self, limit: int = 100, *, before: str | None = None, viewer: str | None = None) -> Page:
        """``history`` with the cursor of the next page."""
        limit = check_limit(limit)
        ended_at, lease_id = _parse_cursor(before) if before else (float("inf"), "")
        rows = self.db.execute("SELECT * FROM history WHERE ended_at < ? OR (ended_at = ? AND lease_id < ?)"
                               " ORDER BY ended_at DESC, lease_id DESC LIMIT ?",
                               (ended_at, ended_at, lease_id, limit)).fetchall()
        entries = []
        for r in rows:
            entry = {**dict(r), "devices": [d["id"] for d in json.loads(r["devices_json"])]}
            if viewer is not None and r["user"] != viewer:  # nor who ended it: a reason may name processes
                entry.update(server="", kernel_id=None, notebook=None, pid=None, end_reason=_public_reason(r["end_reason"]))
            entries.append(entry)
        last = rows[-1] if len(rows) == limit else None
        return Page(items=entries, next=last and _cursor(last["ended_at"], last["lease_id"]))

    @_serialized
    def usage_records_page(self, since: float = 0.0, *, after: str | None = None, limit: int = 1000) -> Page:
        """``limit`` of ``usage_records`` (oldest first) granted after the cursor ``after``, and the next cursor."""
        limit = check_limit(limit)
        since = float(since)
        granted_at, lease_id = _parse_cursor(after) if after else (float("-inf"), "")
        now = time.time()
        rows = self.db.execute(
            "SELECT * FROM (SELECT lease_id, user, card_type, devices_json, granted_at, ended_at, end_reason FROM history"
            " WHERE ended_at > ? UNION ALL SELECT id, user, card_type, devices_json, granted_at, NULL, NULL FROM leases"
            " WHERE ? < ?) WHERE granted_at > ? OR (granted_at = ? AND lease_id > ?) ORDER BY granted_at, lease_id LIMIT ?",
            (since, since, now, granted_at, granted_at, lease_id, limit)).fetchall()
        records = []
        for row in rows:
            devices = json.loads(row["devices_json"])
            hours = max((row["ended_at"] or now) - max(row["granted_at"], since), 0.0) / 3600.0
            chips = sum(d["chips"] for d in devices)
            records.append(UsageRecord(
                lease_id=row["lease_id"], user=row["user"], card_type=row["card_type"],
                devices=tuple(d["id"] for d in devices), chips=chips, granted_at=row["granted_at"],
                ended_at=row["ended_at"], end_reason=row["end_reason"],
                device_hours=len(devices) * hours, chip_hours=chips * hours,
            ))
        last = rows[-1] if len(rows) == limit else None
        return Page(items=records, next=last and _cursor(last["granted_at"], last["lease_id"]))

    def usage(self, since: float = 0.0) -> list[dict]:
        """Device-hours and chip-hours per user since ``since`` (epoch seconds), active leases included."""
        return usage_totals(self.usage_records(since))

    @_serialized
    def device_states(self, *, viewer: str | None = None) -> list[dict]:
        """Every device with its state (free, leased, resetting, unhealthy), holder, and unaccounted processes."""
        devices = self.devices(fresh=True)
        rows = self.db.execute("SELECT * FROM leases").fetchall()
        resets = {r["device_id"]: r for r in self.db.execute("SELECT * FROM resets").fetchall()}
        by_device = {d.id: lease for lease in map(self._to_lease, rows) for d in lease.devices}
        pids = {r["id"]: {p for p in (r["owner_pid"], r["kernel_pid"]) if p} for r in rows}  # who may hold the node
        states = []
        for device in devices:
            lease = by_device.get(device.id)
            covered = pids[lease.id] if lease else set()
            unaccounted = [describe(pid) for pid in device.holders if not (lineage(pid) & covered)]
            if viewer is not None:  # that another user holds a node is shown; their process, to root only
                unaccounted = [{**p, "pid": None, "name": None, "cmdline": None} if p["user"] != viewer else p
                               for p in unaccounted]
            shown = lease and self._shown(lease, viewer)
            reset = resets.get(device.id)
            data = {**device.to_json(), "held_outside": not lease and bool(device.holders)}
            if reset and reset["failed"]:
                data.update(problem=reset["failed"], healthy=False)
            state = "unhealthy" if not data["healthy"] else "resetting" if reset else "leased" if lease else "free"
            states.append(
                {
                    **data,
                    "state": state,
                    "reset": None if not reset else {
                        "reason": reset["reason"], "waiting_for": reset["waiting_for"], "failed": reset["failed"],
                        "done": reset["done_at"] is not None,
                    },
                    "lease_id": lease.id if lease else None,
                    "user": lease.user if lease else None,
                    "kernel_id": shown.kernel_id if shown else None,
                    "notebook": shown.notebook if shown else None,
                    "unaccounted_processes": unaccounted,
                }
            )
        return states

    @_serialized
    def report(self, *, viewer: str | None = None) -> dict:
        """Everything about the devices in one document (``GET /jupyter-tt/api/devices``)."""
        states = self.device_states(viewer=viewer)
        return {
            "inventory": self.inventory.describe(),
            "scheduler": {"mode": self.mode, "state_dir": self.state_dir, "enforcing": False,
                          "enforcement": "coordination only: in personal mode, leases are agreed among this user's own "
                                         "processes; the host's scheduler service fences device nodes"},
            "devices": states,
            "unaccounted_processes": [{**p, "device": s["id"]} for s in states for p in s["unaccounted_processes"]],
            "leases": [lease.to_json() for lease in self.leases(viewer=viewer)],
            "queue": [w.to_json() for w in self.queue(viewer=viewer)],
        }

    # ------------------------------------------------------------------ internals

    def _check_request(self, count: int, card_type: str, who: Caller) -> str:
        card_type = DeviceRequest.parse(count, card_type, least=1, what="a request").card_type
        if who.quota and count > who.quota:
            raise RequestError(
                f"{count} devices is over {who.user}'s quota of {who.quota}: ask for at most {who.quota}"
            )
        problem = self._never_met(count, card_type, self._usable(self.db))
        if problem:
            raise RequestError(problem)
        return card_type

    def _usable(self, db: sqlite3.Connection) -> list[Device]:
        """The devices a lease may ever get as things stand: healthy, and not failed in a reset."""
        failed = {r[0] for r in db.execute("SELECT device_id FROM resets WHERE failed IS NOT NULL")}
        return [d for d in self.devices() if d.healthy and d.id not in failed]

    def _never_met(self, count: int, card_type: str, usable: list[Device]) -> str | None:
        """Why ``count`` devices of ``card_type`` cannot be leased at once among ``usable``, or None."""
        most = most_at_once(card_type, usable)
        if count <= most:
            return None
        counts = Counter(d.card_type for d in usable)
        unhealthy = len(self.devices()) - len(usable)
        have = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "no devices"
        label = " (simulated)" if self.inventory.simulated else ""
        what = "of one card type" if card_type == ANY else card_type
        return (f"this host has {have}{label}"
                + (f" that can be leased ({unhealthy} more unhealthy: see `jupyter tt devices`)" if unhealthy else "")
                + f": {count} {what} can never be leased at once. Ask for at most {most}"
                + ("" if card_type == ANY else f" {card_type}, or for card type 'any'"))

    @contextlib.contextmanager
    def _write(self):
        before = self.db.total_changes
        with store.transaction(self.db) as db:
            yield db
        if self.db.total_changes != before:
            for listener in self.listeners:
                listener()

    @_serialized
    def timeout_message(self, waiting: Waiting, timeout: float | None) -> str:
        """Why a wait for ``waiting`` ended without devices, and what to do (WaitTimeout's message)."""
        what = "device" if waiting.card_type == ANY else waiting.card_type
        taken = {d for lease in self.leases() for d in lease.device_ids}
        unleased = [d for d in self.devices() if d.id not in taken]
        free = Counter(d.card_type for d in unleased if d.healthy)
        free_now = ", ".join(f"{n} {t}" for t, n in sorted(free.items())) or "nothing"
        with store.snapshot(self.db) as db:
            kept = sum(w.reserved for w in self._queue(db) if w.position < waiting.position)
        if kept:
            free_now += f", of which {kept} kept for requests ahead of you"
        unhealthy = "".join(f"; device {d.id} ({d.card_type}) is unleased but unhealthy: {d.problem}" for d in unleased
                            if not d.healthy)
        return (
            f"no {waiting.devices} {what}{'s' * (waiting.devices > 1)} became free within {timeout:g} s "
            f"(you were at position {waiting.position} of {waiting.queued} in the queue; free now: {free_now}{unhealthy}). "
            f"Try again later, ask for fewer devices, or pick a kernel for another card type"
        )

    def _held_by(self, db: sqlite3.Connection, user: str) -> int:
        return db.execute(
            "SELECT COUNT(*) FROM lease_devices JOIN leases ON leases.id = lease_devices.lease_id WHERE user=?",
            (user,),
        ).fetchone()[0]

    def _pass(self, db: sqlite3.Connection) -> list[str]:
        """Reclaim, then grant. Must run inside a write transaction. A row that cannot be read is
        logged and left alone: it never stops the pass for everyone else."""
        now, ticking = time.time(), time.monotonic()
        ended = []
        for row in db.execute("SELECT * FROM leases").fetchall():
            try:
                reason = self._dead_reason(db, row, ticking)
            except (TypeError, ValueError) as e:
                log.error("jupyter-tt: lease row %r is malformed (%s): left alone", row["id"], e)
                continue
            if reason:
                self._end(db, row, reason, now)
                ended.append(row["id"])
                self._mark_for_reset(db, row, reason)  # its holder died with the card open
        for row in db.execute("SELECT id, owner_pid, owner_started, owner_boot FROM requests").fetchall():
            try:
                alive = _ref(row["owner_pid"], row["owner_started"], row["owner_boot"]).alive()
            except (TypeError, ValueError) as e:
                log.error("jupyter-tt: request row %r is malformed (%s): dropped", row["id"], e)
                alive = False
            if not alive:
                db.execute("DELETE FROM requests WHERE id=?", (row["id"],))
        self._check_resets(db, ticking)
        self._grant(db, now)
        return ended

    def _mark_for_reset(self, db: sqlite3.Connection, row: sqlite3.Row, reason: str) -> None:
        """With ``reset_after_crash``: the lease's cards are reset (``run_resets``) before anyone uses them again."""
        if self.reset_after_crash:
            db.executemany(
                "INSERT OR REPLACE INTO resets (device_id, lease_id, reason, since) VALUES (?,?,?,?)",
                [(d["id"], row["id"], clean_reason(reason), time.time()) for d in json.loads(row["devices_json"])],
            )

    def _check_resets(self, db: sqlite3.Connection, now: float) -> None:
        """Cards reset since: back to the pool once their heartbeat changed, unhealthy if it does not in time."""
        rows = db.execute("SELECT * FROM resets WHERE done_at IS NOT NULL AND failed IS NULL").fetchall()
        if not rows:
            return
        beats = {d.id: d.telemetry.heartbeat for d in self.devices(fresh=True)}
        for row in rows:
            beat = beats.get(row["device_id"])
            if beat is not None and beat != row["heartbeat"]:
                db.execute("DELETE FROM resets WHERE device_id=?", (row["device_id"],))
                log.info("jupyter-tt: device %d is back in the pool after its reset", row["device_id"])
            elif now - row["done_at"] > self.reset_verify_timeout:
                db.execute("UPDATE resets SET failed=? WHERE device_id=?", (
                    f"reset after {row['reason']}, but its firmware heartbeat did not advance within "
                    f"{self.reset_verify_timeout:g} s: check the card, then `jupyter tt reset {row['device_id']}` tries again",
                    row["device_id"]))

    def _dead_reason(self, db: sqlite3.Connection, row: sqlite3.Row, now: float) -> str | None:
        """Why the lease has ended, or None while it lives. ``now`` is monotonic (clock steps do not count)."""
        owner_alive = _ref(row["owner_pid"], row["owner_started"], row["owner_boot"]).alive()
        if row["kernel_pid"] is None:
            return None if owner_alive else f"process {row['owner_pid']} that asked for it exited"
        if _ref(row["kernel_pid"], row["kernel_started"], row["kernel_boot"]).alive():
            if row["kernel_gone_since"] is not None:
                db.execute("UPDATE leases SET kernel_gone_since=NULL WHERE id=?", (row["id"],))
            return None
        if not owner_alive:
            return f"kernel process {row['kernel_pid']} and its server (pid {row['owner_pid']}) exited"
        if row["kernel_gone_since"] is None:
            db.execute("UPDATE leases SET kernel_gone_since=? WHERE id=?", (now, row["id"]))
            return None
        if now - row["kernel_gone_since"] > self.restart_grace:
            return f"kernel process {row['kernel_pid']} exited and was not restarted within {self.restart_grace:g} s"
        return None

    def _grant(self, db: sqlite3.Connection, now: float) -> None:
        """Refuse the waiting requests a card turning unhealthy made impossible, then grant as ``queue.plan`` says."""
        usable = self._usable(db)
        for row in db.execute("SELECT id, user, devices, card_type FROM requests WHERE lease_id IS NULL AND refused IS NULL").fetchall():
            try:
                problem = self._never_met(row["devices"], check_card_type(row["card_type"]), usable)
            except (TypeError, ValueError, RequestError) as e:
                log.error("jupyter-tt: request row %r is malformed (%s): dropped", row["id"], e)
                db.execute("DELETE FROM requests WHERE id=?", (row["id"],))
                continue
            if problem:  # it would wait for ever, and hold up those behind it
                db.execute("UPDATE requests SET refused=? WHERE id=?", (problem, row["id"]))
                log.info("jupyter-tt: request %s of %s can no longer be met: %s", row["id"], row["user"], problem)
        rows, planned = self._plan(db, usable)
        for request_id, chosen in planned.grants.items():
            row = rows[request_id]
            lease_id = _new_id("lease")
            devices = [
                {"id": d.id, "path": d.path, "bdf": d.bdf, "card_type": d.card_type, "chips": d.chips} for d in chosen
            ]
            db.execute(
                "INSERT INTO leases (id, user, server, kernel_id, notebook, card_type, devices_json, owner_pid,"
                " owner_started, owner_boot, requested_at, granted_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (lease_id, row["user"], row["server"], row["kernel_id"], row["notebook"], row["card_type"], json.dumps(devices),
                 row["owner_pid"], row["owner_started"], row["owner_boot"], row["requested_at"], now),
            )
            db.executemany("INSERT INTO lease_devices (device_id, lease_id) VALUES (?, ?)", [(d.id, lease_id) for d in chosen])
            db.execute("UPDATE requests SET lease_id=? WHERE id=?", (lease_id, row["id"]))

    def _held(self, db: sqlite3.Connection) -> Counter:
        return Counter(dict(db.execute(
            "SELECT user, COUNT(*) FROM lease_devices JOIN leases ON leases.id = lease_devices.lease_id GROUP BY user"
        ).fetchall()))

    def _plan(self, db: sqlite3.Connection, usable: list[Device] | None = None) -> tuple[dict[str, sqlite3.Row], Plan]:
        """The waiting requests by id, and what a pass would grant and reserve now."""
        rows = {r["id"]: r for r in db.execute("SELECT * FROM requests WHERE lease_id IS NULL AND refused IS NULL")}
        taken = {r[0] for r in db.execute("SELECT device_id FROM lease_devices UNION SELECT device_id FROM resets")}
        # A node some process holds open outside any lease (opened before the service fenced it, or by
        # root) is not granted until they close it: its new holder would share the card.
        free = [d for d in self.devices() if d.id not in taken and not d.holders]
        asks = [Ask(request_id=r["id"], user=r["user"], devices=r["devices"], card_type=r["card_type"],
                          requested_at=r["requested_at"], quota=r["quota"] or 0) for r in rows.values()]
        usable = self._usable(db) if usable is None else usable
        return rows, plan(asks, free=free, usable=usable, held=self._held(db))

    def _queue(self, db: sqlite3.Connection) -> list[Waiting]:
        """Waiting requests in the order they will be served (``queue.fair_order``), with what each keeps."""
        held = self._held(db)
        rows, planned = self._plan(db)
        waiting = []
        for i, request_id in enumerate(planned.order):
            r = rows[request_id]
            kept = planned.reservations.get(request_id)
            waiting.append(Waiting(
                r["id"], r["user"], r["kernel_id"], r["devices"], r["card_type"], i + 1, len(rows), r["requested_at"],
                r["notebook"], over_quota=bool(r["quota"]) and held[r["user"]] + r["devices"] > r["quota"],
                reserved=len(kept.devices) if kept else 0))
        return waiting

    def _outcome(self, db: sqlite3.Connection, request_id: str) -> Lease | Waiting | RequestError:
        row = db.execute("SELECT lease_id, refused FROM requests WHERE id=?", (request_id,)).fetchone()
        if row is None:
            raise LeaseError(f"request {request_id} is no longer queued (its process exited or it was cancelled)")
        if row["refused"]:  # returned, not raised: the transaction that removes it must commit
            db.execute("DELETE FROM requests WHERE id=?", (request_id,))
            return RequestError(row["refused"])
        if row["lease_id"]:
            db.execute("DELETE FROM requests WHERE id=?", (request_id,))
            lease = self._lease(db, row["lease_id"])
            if lease is None:
                raise LeaseError(f"the lease granted to request {request_id} ended before it was picked up")
            return lease
        return next(w for w in self._queue(db) if w.request_id == request_id)

    def _end(self, db: sqlite3.Connection, row: sqlite3.Row, reason: str, now: float) -> None:
        db.execute("DELETE FROM lease_devices WHERE lease_id=?", (row["id"],))
        db.execute("DELETE FROM leases WHERE id=?", (row["id"],))
        db.execute(
            "INSERT OR REPLACE INTO history (lease_id, user, server, kernel_id, notebook, card_type, devices_json, pid,"
            " requested_at, granted_at, ended_at, end_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (row["id"], row["user"], row["server"], row["kernel_id"], row["notebook"], row["card_type"], row["devices_json"],
             row["kernel_pid"] or row["owner_pid"], row["requested_at"], row["granted_at"], now, clean_reason(reason)),
        )

    def _lease(self, db: sqlite3.Connection, lease_id: str) -> Lease | None:
        row = db.execute("SELECT * FROM leases WHERE id=?", (lease_id,)).fetchone()
        return self._to_lease(row) if row else None

    @staticmethod
    def _to_lease(row: sqlite3.Row) -> Lease:
        return Lease(
            id=row["id"],
            user=row["user"],
            server=row["server"],
            kernel_id=row["kernel_id"],
            card_type=row["card_type"],
            devices=tuple(LeasedDevice(**d) for d in json.loads(row["devices_json"])),
            pid=row["kernel_pid"] or row["owner_pid"],
            requested_at=row["requested_at"],
            granted_at=row["granted_at"],
            notebook=row["notebook"],
        )

