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
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..devices import Device, InventoryBackend
from ..devices.sample import InventorySample
from ..errors import LeaseError, RequestError
from ..text import clean_label
from . import reports, store
from . import resets as card_resets
from .api import SchedulerAPI
from .leases import (
    Caller,
    DeviceRequest,
    DeviceState,
    Lease,
    Page,
    PendingReset,
    Report,
    SchedulerInfo,
    UsageTotal,
    Waiting,
    usage_totals,
)
from .placement import ANY, check_card_type, most_at_once
from .processes import ProcessRef
from .queue import Ask, Plan, plan

log = logging.getLogger("jupyter_tt.scheduler")

#: The longest kernel id or notebook path a request may carry (they are labels, shown in reports).
MAX_LABEL = 256
#: Seconds between prunings of the history (``Scheduler.prune``).
PRUNE_INTERVAL = 60.0
#: The longest end reason stored (a release's reason, a crash's account).
MAX_REASON = 300


def _raised(outcome: Lease | Waiting | RequestError) -> Lease | Waiting:
    if isinstance(outcome, RequestError):
        raise outcome
    return outcome


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


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
    #: Seconds old the device reading of a report may be. 0: read now. The service's readers take the
    #: one its passes keep (``SchedulerService.reader``), so that a report never waits on sysfs.
    report_age = 0.0

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
        reset_verify_linked: float = card_resets.LINKED_VERIFY_TIMEOUT,
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
        self.reset_verify_linked = reset_verify_linked  # for a card linked to others by Ethernet
        self._warned_containers: set[tuple[str, int, str]] = set()  # (lease, device, container) said once
        #: How long, and how many, ended leases the history keeps (``prune``; 0 days: for ever).
        self.history_days, self.history_rows = history_days, history_rows
        self._pruned = float("-inf")
        self._lock = threading.RLock()
        #: The cards' last reading, shared with ``reader()``s: one thread reads the cards at a time.
        self._sample = InventorySample(inventory)
        self.db = store.connect(state_dir, inventory.key)
        self._me: ProcessRef | None = None
        #: Called after a transaction of this process changed the state (the server emits events then).
        self.listeners: list[Callable[[], None]] = []

    @property
    def me(self) -> ProcessRef:
        # Looked up lazily and per PID: a forked child must not inherit its parent's identity.
        if self._me is None or self._me.pid != os.getpid():
            self._me = ProcessRef.current()
        return self._me

    def _caller(self, caller: Caller | None) -> Caller:
        return caller or Caller(self.user, self.me, self.quota, self.server)

    def devices(self, fresh: bool = False) -> list[Device]:
        return self._sample.get(0.0 if fresh else self.inventory_ttl)

    def reader(self) -> Scheduler:
        """Another handle on the same state for reports: its own SQLite connection (query-only) and
        lock, so that a long read runs beside lease operations (WAL lets it) and never holds one up.
        Only the scheduler service uses it; writing through it fails."""
        view = copy.copy(self)
        view._lock = threading.RLock()
        view.db = store.connect(self.state_dir, self.inventory.key, query_only=True)
        view.listeners = []
        return view

    # ------------------------------------------------------------------ requests

    @_serialized
    def submit(
        self, count: int, card_type: str = ANY, *, kernel_id: str | None = None, notebook: str | None = None,
        caller: Caller | None = None, replaces: str | None = None,
    ) -> Lease | Waiting:
        """Ask for ``count`` devices of ``card_type``: the lease if granted now, else the queue position.

        ``replaces``: a waiting request of the same user that this one takes the place of (a notebook's
        kernel started again while it waited): that request leaves the queue and this one keeps its time
        of asking, so its place. Anyone else's request, or one granted meanwhile, is left as it is.
        Raises RequestError at once for a request that can never be met.
        """
        who = self._caller(caller)
        card_type = self._check_request(count, card_type, who)
        kernel_id, notebook = _label(kernel_id, "kernel_id"), _label(notebook, "notebook", truncate=True)
        request_id = _new_id("req")
        now = time.time()
        with self._write() as db:
            older = store.request(db, replaces) if replaces else None
            if older is not None and older.user == who.user and not older.lease_id and not older.refused:
                store.delete_request(db, older.id)
                now = older.requested_at
            held = store.held(db, who.user)[who.user]
            if who.quota and held + count > who.quota:
                raise RequestError(
                    f"{who.user} holds {held} device{'s' * (held != 1)} and may hold {who.quota} at once: "
                    f"a request for {count} more is over the quota. Shut down a kernel that holds devices, "
                    f"or ask for at most {max(who.quota - held, 0)}"
                )
            if self.max_waiting:
                waiting = store.waiting_count(db, who.user)
                if waiting >= self.max_waiting:
                    raise RequestError(f"{who.user} has {waiting} requests waiting already: wait for them, or cancel some")
            store.insert_request(db, store.RequestRow(
                id=request_id, user=who.user, server=who.server, kernel_id=kernel_id, notebook=notebook, devices=count,
                card_type=card_type, quota=who.quota, owner_pid=who.process.pid, owner_started=who.process.started,
                owner_boot=who.process.boot_id, requested_at=now))
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
            store.delete_request(db, request_id)
            granted = store.lease(db, row.lease_id) if row and row.lease_id else None
            lease = granted.lease() if granted else None
            self._pass(db)  # others may go now
            return lease

    def _own_request(self, db: sqlite3.Connection, request_id: str, caller: Caller | None) -> store.RequestRow | None:
        row = store.request(db, request_id)
        if row is not None and caller is not None and row.user != caller.user:
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
            row = store.lease(db, lease_id)
            if row is None:
                if user is not None:
                    raise LeaseError(f"no active lease {lease_id!r}: it has ended or never existed", status=404)
                return False
            if user is not None and row.user != user:
                raise LeaseError(f"lease {lease_id} belongs to {row.user}: only they can release it", status=403)
            store.end_lease(db, row, clean_reason(reason), time.time())
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
            store.attach_kernel(db, lease_id, ref)

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
            detached = store.detach_kernel(db, lease_id, who.process)
            row = store.lease(db, lease_id)
            if detached and crash and row:
                self._mark_for_reset(db, row, crash)
            return detached

    @_serialized
    def lease_resets(self, lease_id: str, *, caller: Caller | None = None) -> list[PendingReset]:
        """The lease's cards still out for a reset (empty: its kernel may start)."""
        with store.snapshot(self.db) as db:
            self._own_lease(db, lease_id, caller)
            return card_resets.pending(store.lease_resets(db, lease_id))

    @_serialized
    def get_lease(self, lease_id: str, *, viewer: str | None = None) -> Lease | None:
        """The lease if it is active (another user's in its public view, for a ``viewer``)."""
        row = store.lease(self.db, lease_id)
        return reports.shown(row.lease(), viewer) if row else None

    @_serialized
    def ended_lease(self, lease_id: str, *, viewer: str | None = None) -> tuple[Lease, str] | None:
        """An ended lease from the history, with why it ended; None if it never existed (or is active)."""
        row = store.ended_lease(self.db, lease_id)
        return None if row is None else (reports.shown(row.lease(), viewer), row.end_reason)

    def _own_lease(self, db: sqlite3.Connection, lease_id: str, caller: Caller | None) -> None:
        row = store.lease(db, lease_id)
        if row is not None and caller is not None and row.user != caller.user:
            raise LeaseError(f"lease {lease_id} belongs to {row.user}: only they can change it", status=403)

    # ------------------------------------------------------------------ reports
    # ``viewer``: the user a report is for. Their own leases and requests come in full, other users'
    # in their public view (no kernel ids, notebook paths, processes). None: everything (personal mode).

    @_serialized
    def reconcile(self) -> list[str]:
        """Run a pass: end leases of dead processes, grant what can be. Returns the ended lease ids.
        Once a minute it also prunes the history (``prune``)."""
        with self._write() as db:
            ended = self._pass(db)
            self._warn_of_containers(db)
        if time.monotonic() - self._pruned > PRUNE_INTERVAL:
            self.prune()
        return ended

    def _warn_of_containers(self, db: sqlite3.Connection) -> None:
        """A container given a card that a lease holds: said once to the log of the server or service
        (the devices report shows it to the lessee: ``containers`` of the device)."""
        devices = {d.id: d for d in self.devices()}
        for row in store.leases(db):
            for d in row.devices():
                for name in devices[d["id"]].containers if d["id"] in devices else ():
                    if (row.id, d["id"], name) not in self._warned_containers and len(self._warned_containers) < 1024:
                        self._warned_containers.add((row.id, d["id"], name))
                        log.warning("jupyter-tt: container %s was given device %d, which lease %s of %s holds",
                                    name, d["id"], row.id, row.user)

    @_serialized
    def prune(self) -> int:
        """Drop ended leases older than ``history_days`` and beyond the newest ``history_rows``, and give
        their pages back to the file system. Returns how many went."""
        self._pruned = time.monotonic()
        with self._write() as db:
            gone = store.prune_history(db, keep=self.history_rows, ended_before=(
                time.time() - self.history_days * 86400 if self.history_days > 0 else None))
        if gone:
            store.give_back_space(self.db)
            log.info("jupyter-tt: pruned %d ended leases from the history", gone)
        return gone

    def run_resets(self) -> list[int]:
        """Reset the cards waiting for it whose nodes nobody holds; returns the ones reset.

        The reset runs outside the scheduler's lock (it takes seconds): call this from a thread of its
        own, never from a scheduling pass. The next passes return each card once its heartbeat advances."""
        with self._lock:
            pending = [r.device_id for r in store.resets(self.db) if r.done_at is None and r.failed is None]

        def read(device_id: int) -> Device | None:  # afresh, just before each card's reset
            return next((d for d in self.devices(fresh=True) if d.id == device_id), None)

        return card_resets.run(pending, read, tool=self.reset_tool, record=self._reset_result, now=time.monotonic)

    @_serialized
    def _reset_result(self, device_id: int, *, waiting_for: str | None = None, done_at: float | None = None,
                      heartbeat: int | None = None, failed: str | None = None) -> None:
        with self._write() as db:
            store.set_reset(db, device_id, waiting_for=waiting_for, done_at=done_at, heartbeat=heartbeat, failed=failed)

    @_serialized
    def retry_reset(self, device_id: int) -> bool:
        """Reset a card again whose reset failed (or that waits for one); False if it needs none."""
        with self._write() as db:
            return store.set_reset(db, device_id)

    @_serialized
    def resets(self) -> dict[int, dict]:
        """Cards out of the pool for a reset, by device id: lease_id, reason, since, waiting_for, done_at, failed."""
        with store.snapshot(self.db) as db:
            return {r.device_id: r.columns() for r in store.resets(db)}

    @_serialized
    def followed_pids(self) -> set[int]:
        """Every process a lease or a waiting request follows (the service watches them exit)."""
        with store.snapshot(self.db) as db:
            return store.followed_pids(db)

    @_serialized
    def leases(self, *, viewer: str | None = None) -> list[Lease]:
        return [reports.shown(row.lease(), viewer) for row in store.leases(self.db)]

    @_serialized
    def queue(self, *, viewer: str | None = None) -> list[Waiting]:
        with store.snapshot(self.db) as db:
            return [w if viewer is None or w.user == viewer else w.public() for w in self._queue(db)]

    @_serialized
    def history_page(self, limit: int = 100, *, before: str | None = None, viewer: str | None = None) -> Page:
        """``history`` with the cursor of the next page."""
        limit = reports.check_limit(limit)
        rows = store.history(self.db, before=reports.parse_cursor(before) if before else (float("inf"), ""), limit=limit)
        return reports.history_page(rows, limit=limit, viewer=viewer)

    @_serialized
    def usage_records_page(self, since: float = 0.0, *, after: str | None = None, limit: int = 1000) -> Page:
        """``limit`` of ``usage_records`` (oldest first) granted after the cursor ``after``, and the next cursor."""
        limit = reports.check_limit(limit)
        since, now = float(since), time.time()
        rows = store.usage(self.db, since=since, after=reports.parse_cursor(after) if after else (float("-inf"), ""),
                           limit=limit, now=now)
        return reports.usage_page(rows, since=since, limit=limit, now=now)

    def usage(self, since: float = 0.0) -> list[UsageTotal]:
        """Device-hours and chip-hours per user since ``since`` (epoch seconds), active leases included."""
        return usage_totals(self.usage_records(since))

    @_serialized
    def device_states(self, *, viewer: str | None = None) -> list[DeviceState]:
        """Every device with its state (free, leased, resetting, unhealthy), holder, and unaccounted processes."""
        devices = self._sample.get(self.report_age, wait=not self.report_age)
        with store.snapshot(self.db) as db:
            leases, out = store.leases(db), {r.device_id: r for r in store.resets(db)}
        return reports.device_states(devices, leases, out, viewer=viewer)

    @_serialized
    def report(self, *, viewer: str | None = None) -> Report:
        """Everything about the devices in one document (``GET /jupyter-tt/api/devices``)."""
        return Report(
            inventory=self.inventory.describe(),
            scheduler=SchedulerInfo(mode=self.mode, state_dir=self.state_dir, enforcing=False, enforcement=(
                "coordination only: in personal mode, leases are agreed among this user's own processes; the host's "
                "scheduler service fences device nodes")),
            devices=tuple(self.device_states(viewer=viewer)),
            leases=tuple(self.leases(viewer=viewer)),
            queue=tuple(self.queue(viewer=viewer)),
        )

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
        failed = {r.device_id for r in store.resets(db) if r.failed is not None}
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

    def _pass(self, db: sqlite3.Connection) -> list[str]:
        """Reclaim, then grant. Must run inside a write transaction. A row that cannot be read is
        logged and left alone: it never stops the pass for everyone else."""
        now, ticking = time.time(), time.monotonic()
        ended = []
        for row in store.leases(db):
            try:
                reason = self._dead_reason(db, row, ticking)
            except (TypeError, ValueError) as e:
                log.error("jupyter-tt: lease row %r is malformed (%s): left alone", row.id, e)
                continue
            if reason:
                store.end_lease(db, row, clean_reason(reason), now)
                ended.append(row.id)
                self._mark_for_reset(db, row, reason)  # its holder died with the card open
        for request in store.requests(db):
            try:
                alive = request.owner().alive()
            except (TypeError, ValueError) as e:
                log.error("jupyter-tt: request row %r is malformed (%s): dropped", request.id, e)
                alive = False
            if not alive:
                store.delete_request(db, request.id)
        card_resets.check(db, lambda: self.devices(fresh=True), now=ticking, verify_timeout=self.reset_verify_timeout,
                          verify_linked=self.reset_verify_linked)
        self._grant(db, now)
        return ended

    def _mark_for_reset(self, db: sqlite3.Connection, row: store.LeaseRow, reason: str) -> None:
        """With ``reset_after_crash``: the lease's cards are reset (``run_resets``) before anyone uses them again."""
        if self.reset_after_crash:
            card_resets.mark(db, row, clean_reason(reason), now=time.time())

    def _dead_reason(self, db: sqlite3.Connection, row: store.LeaseRow, now: float) -> str | None:
        """Why the lease has ended, or None while it lives. ``now`` is monotonic (clock steps do not count)."""
        owner_alive = row.owner().alive()
        kernel = row.kernel()
        if kernel is None:
            return None if owner_alive else f"process {row.owner_pid} that asked for it exited"
        if kernel.alive():
            if row.kernel_gone_since is not None:
                store.set_kernel_gone(db, row.id, None)
            return None
        if not owner_alive:
            return f"kernel process {row.kernel_pid} and its server (pid {row.owner_pid}) exited"
        if row.kernel_gone_since is None:
            store.set_kernel_gone(db, row.id, now)
            return None
        if now - row.kernel_gone_since > self.restart_grace:
            return f"kernel process {row.kernel_pid} exited and was not restarted within {self.restart_grace:g} s"
        return None

    def _grant(self, db: sqlite3.Connection, now: float) -> None:
        """Refuse the waiting requests a card turning unhealthy made impossible, then grant as ``queue.plan`` says."""
        usable = self._usable(db)
        for request in store.requests(db, waiting=True):
            try:
                problem = self._never_met(request.devices, check_card_type(request.card_type), usable)
            except (TypeError, ValueError, RequestError) as e:
                log.error("jupyter-tt: request row %r is malformed (%s): dropped", request.id, e)
                store.delete_request(db, request.id)
                continue
            if problem:  # it would wait for ever, and hold up those behind it
                store.refuse_request(db, request.id, problem)
                log.info("jupyter-tt: request %s of %s can no longer be met: %s", request.id, request.user, problem)
        waiting, planned = self._plan(db, usable)
        for request_id, chosen in planned.grants.items():
            devices = [{"id": d.id, "path": d.path, "bdf": d.bdf, "card_type": d.card_type, "chips": d.chips} for d in chosen]
            store.insert_lease(db, lease_id=_new_id("lease"), request=waiting[request_id], devices=devices, granted_at=now)

    def _plan(self, db: sqlite3.Connection, usable: list[Device] | None = None) -> tuple[dict[str, store.RequestRow], Plan]:
        """The waiting requests by id, and what a pass would grant and reserve now."""
        waiting = {r.id: r for r in store.requests(db, waiting=True)}
        taken = store.taken_devices(db)
        # A node some process holds open outside any lease (opened before the service fenced it, or by
        # root) is not granted until they close it: its new holder would share the card.
        free = [d for d in self.devices() if d.id not in taken and not d.held_outside]  # a container's too
        asks = [Ask(request_id=r.id, user=r.user, devices=r.devices, card_type=r.card_type, requested_at=r.requested_at,
                    quota=r.quota or 0) for r in waiting.values()]
        usable = self._usable(db) if usable is None else usable
        return waiting, plan(asks, free=free, usable=usable, held=store.held(db))

    def _queue(self, db: sqlite3.Connection) -> list[Waiting]:
        """Waiting requests in the order they will be served (``queue.fair_order``), with what each keeps."""
        held = store.held(db)
        waiting, planned = self._plan(db)
        queued = []
        for i, request_id in enumerate(planned.order):
            r = waiting[request_id]
            kept = planned.reservations.get(request_id)
            queued.append(Waiting(
                r.id, r.user, r.kernel_id, r.devices, r.card_type, i + 1, len(waiting), r.requested_at, r.notebook,
                over_quota=bool(r.quota) and held[r.user] + r.devices > r.quota, reserved=len(kept.devices) if kept else 0))
        return queued

    def _outcome(self, db: sqlite3.Connection, request_id: str) -> Lease | Waiting | RequestError:
        request = store.request(db, request_id)
        if request is None:
            raise LeaseError(f"request {request_id} is no longer queued (its process exited or it was cancelled)")
        if request.refused:  # returned, not raised: the transaction that removes it must commit
            store.delete_request(db, request_id)
            return RequestError(request.refused)
        if request.lease_id:
            store.delete_request(db, request_id)
            granted = store.lease(db, request.lease_id)
            if granted is None:
                raise LeaseError(f"the lease granted to request {request_id} ended before it was picked up")
            return granted.lease()
        return next(w for w in self._queue(db) if w.request_id == request_id)
