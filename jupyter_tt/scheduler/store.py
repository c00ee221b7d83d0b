"""The scheduler's state: one SQLite file in WAL mode per device set, private to whoever owns it.

Only the scheduler opens it: the scheduler service (its own folder, mode 0700, files 0600), or in
personal mode the processes of one OS user (their folder, the same modes). Nobody else can read,
lock or write it, so no other user can freeze, edit or forge it.

Why SQLite: several processes (one user's Jupyter servers, kernels and CLI in personal mode) open
the same file, and each scheduling pass is one transaction that commits whole or not at all, also
when its process is killed mid-way. Writers first take a blocking ``flock`` on ``<name>.lock``: the
kernel wakes the next writer the moment the lock is free and drops it when a holder dies, where
SQLite's own busy handler would sleep and retry (up to 100 ms a try under contention).
``lease_devices`` has the device id as primary key: a device cannot be in two leases, whatever the
code above does.

Every statement on the state is a function here (the scheduler's modules hold none): each takes the
connection of the transaction it runs in and returns rows as dataclasses (``LeaseRow``,
``RequestRow``, ``HistoryRow``, ``ResetRow``). A row's fields are the columns as stored; what reads
them (a process reference, the devices) is a method, so that one malformed row fails only where it
is read, never the listing around it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, fields
from typing import Self

from ..errors import ConfigError
from ..files import private_dir
from .leases import Lease, LeasedDevice
from .processes import BOOT_ID, ProcessRef

SCHEMA_VERSION = 6
#: Bytes the write-ahead log is cut back to after each checkpoint.
WAL_LIMIT = 4 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    kernel_id TEXT,
    notebook TEXT,                    -- the kernel's session path, where the asker knew it
    card_type TEXT NOT NULL,          -- as requested ('any' allowed)
    devices_json TEXT NOT NULL,       -- the granted devices: id, path, bdf, card_type, chips
    owner_pid INTEGER NOT NULL,       -- the process that asked (a Jupyter server, a CLI, a test)
    owner_started REAL NOT NULL,      -- its start in clock ticks since boot (schema 2: wall-clock seconds)
    owner_boot TEXT,                  -- the boot it started in (/proc/sys/kernel/random/boot_id)
    kernel_pid INTEGER,               -- the kernel the lease follows, once launched
    kernel_started REAL,
    kernel_boot TEXT,
    kernel_gone_since REAL,           -- monotonic time of the first pass that saw the kernel gone while its owner lived
    requested_at REAL NOT NULL,
    granted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_devices (
    device_id INTEGER PRIMARY KEY,
    lease_id TEXT NOT NULL REFERENCES leases(id)
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    kernel_id TEXT,
    notebook TEXT,                    -- the kernel's session path, where the asker knew it
    devices INTEGER NOT NULL,
    card_type TEXT NOT NULL,
    quota INTEGER NOT NULL,           -- the asker's quota (0: none), checked again at grant time
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    owner_boot TEXT,
    requested_at REAL NOT NULL,
    lease_id TEXT,                    -- set when granted, then the asker picks it up and deletes the row
    refused TEXT                      -- why it can no longer be met (a card turned unhealthy): the asker is told
);
CREATE TABLE IF NOT EXISTS history (
    lease_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    server TEXT NOT NULL,
    kernel_id TEXT,
    notebook TEXT,                    -- the kernel's session path, where the asker knew it
    card_type TEXT NOT NULL,
    devices_json TEXT NOT NULL,
    pid INTEGER,
    requested_at REAL NOT NULL,
    granted_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    end_reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_user ON history(user, ended_at);
CREATE TABLE IF NOT EXISTS resets (   -- cards out of the pool until a reset after their holder died
    device_id INTEGER PRIMARY KEY,
    lease_id TEXT NOT NULL,           -- the lease whose holder died
    reason TEXT NOT NULL,             -- how it ended
    since REAL NOT NULL,
    waiting_for TEXT,                 -- why the reset has not run yet (other processes hold the node)
    done_at REAL,                     -- the reset command succeeded (monotonic: waits for the heartbeat)
    heartbeat INTEGER,                -- the last heartbeat read: before the reset, then each new one after
    failed TEXT,                      -- why the card could not be reset: it stays out, unhealthy
    beats INTEGER NOT NULL DEFAULT 0  -- new heartbeats seen since the reset (two bring the card back)
);
"""


# Columns added since version 1, for state files that servers of an older release created.
ADDED_COLUMNS = [
    ("leases", "notebook TEXT"), ("requests", "notebook TEXT"), ("history", "notebook TEXT"),  # 2
    ("leases", "owner_boot TEXT"), ("leases", "kernel_boot TEXT"), ("requests", "owner_boot TEXT"),  # 3
    ("requests", "refused TEXT"),  # 5
    ("resets", "beats INTEGER NOT NULL DEFAULT 0"),  # 6
]


def _migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file up to this version (every step is idempotent)."""
    db.execute("BEGIN IMMEDIATE")  # one process at a time: two ALTERs of one column would clash
    try:
        for statement in SCHEMA.split(";"):  # executescript would commit: one statement at a time
            if statement.strip():
                db.execute(statement)
        for table, column in ADDED_COLUMNS:
            present = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        # Before 3, kernel_gone_since was wall-clock time: let the next pass look again.
        db.execute("UPDATE leases SET kernel_gone_since=NULL WHERE owner_boot IS NULL")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Connection(sqlite3.Connection):
    lock_fd: int = -1


def connect(state_dir: str | os.PathLike, name: str, *, query_only: bool = False) -> Connection:
    """Open (creating if needed) ``<state_dir>/<name>.sqlite3``, private to this OS user (0600).
    ``query_only``: a connection for reports, which SQLite refuses to write through."""
    directory = private_dir(state_dir, "the scheduler state folder")
    path = directory / f"{name}.sqlite3"
    # Created 0600 before SQLite opens it: SQLite gives the WAL and shared-memory files the database's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False, factory=Connection)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect in a new file: pruned rows give their pages back
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")  # the WAL shrinks back to this after a checkpoint
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _migrate(db)
        db.lock_fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if query_only:
            db.execute("PRAGMA query_only=ON")
    except sqlite3.Error as e:
        raise ConfigError(f"cannot open the scheduler state {path}: {e}. Set JUPYTER_TT_STATE_DIR to a folder of yours") from e
    for suffix in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".lock"):  # files of an older release were 0666
        with contextlib.suppress(OSError):
            os.chmod(directory / f"{name}{suffix}", 0o600)
    return db


@contextlib.contextmanager
def transaction(db: Connection):
    """A write transaction that holds the host-wide lock from its first statement."""
    fcntl.flock(db.lock_fd, fcntl.LOCK_EX)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        fcntl.flock(db.lock_fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def snapshot(db: sqlite3.Connection):
    """A read transaction: several SELECTs that see one consistent state."""
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


# ---------------------------------------------------------------------- rows


def process_ref(pid, started, boot) -> ProcessRef:
    """A stored process. Rows written before boot ids were stored (schema 2) hold a wall-clock start
    time: only the PID's existence can be checked for those. TypeError/ValueError when malformed."""
    if boot is None:
        return ProcessRef(int(pid), 0, BOOT_ID)
    return ProcessRef(int(pid), int(started), boot)


class _Row:
    """A table's row as a dataclass of its columns."""

    @classmethod
    def of(cls, row: sqlite3.Row) -> Self:
        return cls(**{name: row[name] for name in _columns(cls)})  # type: ignore[arg-type]

    def columns(self) -> dict:
        """The row as a dict of its columns (all plain values: ``asdict`` without its deep copies)."""
        return dict(vars(self))


@functools.cache
def _columns(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, kw_only=True)
class _Granted(_Row):
    """A row that names granted devices: id, path, bdf, card_type and chips of each, as JSON."""

    devices_json: str

    def devices(self) -> list[dict]:
        return json.loads(self.devices_json)


@dataclass(frozen=True, kw_only=True)
class _Held(_Granted):
    """The columns a lease keeps from its grant to the end of its history."""

    user: str
    server: str
    kernel_id: str | None
    notebook: str | None
    card_type: str


@dataclass(frozen=True, kw_only=True)
class LeaseRow(_Held):
    id: str
    owner_pid: int
    owner_started: float
    owner_boot: str | None
    kernel_pid: int | None
    kernel_started: float | None
    kernel_boot: str | None
    kernel_gone_since: float | None
    requested_at: float
    granted_at: float

    def owner(self) -> ProcessRef:
        return process_ref(self.owner_pid, self.owner_started, self.owner_boot)

    def kernel(self) -> ProcessRef | None:
        return None if self.kernel_pid is None else process_ref(self.kernel_pid, self.kernel_started, self.kernel_boot)

    def lease(self) -> Lease:
        return Lease(id=self.id, user=self.user, server=self.server, kernel_id=self.kernel_id, card_type=self.card_type,
                     devices=tuple(LeasedDevice(**d) for d in self.devices()), pid=self.kernel_pid or self.owner_pid,
                     requested_at=self.requested_at, granted_at=self.granted_at, notebook=self.notebook)


@dataclass(frozen=True, kw_only=True)
class RequestRow(_Row):
    id: str
    user: str
    server: str
    kernel_id: str | None
    notebook: str | None
    devices: int
    card_type: str
    quota: int
    owner_pid: int
    owner_started: float
    owner_boot: str | None
    requested_at: float
    lease_id: str | None = None
    refused: str | None = None

    def owner(self) -> ProcessRef:
        return process_ref(self.owner_pid, self.owner_started, self.owner_boot)


@dataclass(frozen=True, kw_only=True)
class HistoryRow(_Held):
    lease_id: str
    pid: int | None
    requested_at: float
    granted_at: float
    ended_at: float
    end_reason: str

    def lease(self) -> Lease:
        return Lease(id=self.lease_id, user=self.user, server=self.server, kernel_id=self.kernel_id,
                     card_type=self.card_type, devices=tuple(LeasedDevice(**d) for d in self.devices()),
                     pid=self.pid or 0, requested_at=self.requested_at, granted_at=self.granted_at, notebook=self.notebook)


@dataclass(frozen=True, kw_only=True)
class UsageRow(_Granted):
    """A lease as usage counts it: ended (from the history) or still held (``ended_at`` None)."""

    lease_id: str
    user: str
    card_type: str
    granted_at: float
    ended_at: float | None
    end_reason: str | None


@dataclass(frozen=True, kw_only=True)
class ResetRow(_Row):
    device_id: int
    lease_id: str
    reason: str
    since: float
    waiting_for: str | None
    done_at: float | None
    heartbeat: int | None
    failed: str | None
    beats: int = 0


# ---------------------------------------------------------------------- leases


def leases(db: sqlite3.Connection) -> list[LeaseRow]:
    return [LeaseRow.of(r) for r in db.execute("SELECT * FROM leases ORDER BY granted_at, id")]


def lease(db: sqlite3.Connection, lease_id: str) -> LeaseRow | None:
    row = db.execute("SELECT * FROM leases WHERE id=?", (lease_id,)).fetchone()
    return LeaseRow.of(row) if row else None


def insert_lease(db: sqlite3.Connection, *, lease_id: str, request: RequestRow, devices: list[dict], granted_at: float) -> None:
    """A lease for ``request`` of ``devices`` (id, path, bdf, card_type, chips), and the request marked granted."""
    db.execute(
        "INSERT INTO leases (id, user, server, kernel_id, notebook, card_type, devices_json, owner_pid,"
        " owner_started, owner_boot, requested_at, granted_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (lease_id, request.user, request.server, request.kernel_id, request.notebook, request.card_type,
         json.dumps(devices), request.owner_pid, request.owner_started, request.owner_boot, request.requested_at,
         granted_at),
    )
    db.executemany("INSERT INTO lease_devices (device_id, lease_id) VALUES (?, ?)", [(d["id"], lease_id) for d in devices])
    db.execute("UPDATE requests SET lease_id=? WHERE id=?", (lease_id, request.id))


def attach_kernel(db: sqlite3.Connection, lease_id: str, kernel: ProcessRef) -> None:
    db.execute("UPDATE leases SET kernel_pid=?, kernel_started=?, kernel_boot=?, kernel_gone_since=NULL WHERE id=?",
               (kernel.pid, kernel.started, kernel.boot_id, lease_id))


def detach_kernel(db: sqlite3.Connection, lease_id: str, owner: ProcessRef) -> bool:
    """The lease follows ``owner`` until a kernel is attached again; False if there is no such lease."""
    return db.execute(
        "UPDATE leases SET kernel_pid=NULL, kernel_started=NULL, kernel_boot=NULL, kernel_gone_since=NULL,"
        " owner_pid=?, owner_started=?, owner_boot=? WHERE id=?",
        (owner.pid, owner.started, owner.boot_id, lease_id),
    ).rowcount == 1


def set_kernel_gone(db: sqlite3.Connection, lease_id: str, since: float | None) -> None:
    db.execute("UPDATE leases SET kernel_gone_since=? WHERE id=?", (since, lease_id))


def end_lease(db: sqlite3.Connection, row: LeaseRow, reason: str, now: float) -> None:
    """The lease's devices free, and the lease in the history with why it ended."""
    db.execute("DELETE FROM lease_devices WHERE lease_id=?", (row.id,))
    db.execute("DELETE FROM leases WHERE id=?", (row.id,))
    db.execute(
        "INSERT OR REPLACE INTO history (lease_id, user, server, kernel_id, notebook, card_type, devices_json, pid,"
        " requested_at, granted_at, ended_at, end_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (row.id, row.user, row.server, row.kernel_id, row.notebook, row.card_type, row.devices_json,
         row.kernel_pid or row.owner_pid, row.requested_at, row.granted_at, now, reason),
    )


def held(db: sqlite3.Connection, user: str | None = None) -> Counter:
    """Devices held, by user (only ``user``'s, if given)."""
    query = "SELECT user, COUNT(*) FROM lease_devices JOIN leases ON leases.id = lease_devices.lease_id"
    if user is None:
        return Counter(dict(db.execute(query + " GROUP BY user").fetchall()))
    return Counter(dict(db.execute(query + " WHERE user=? GROUP BY user", (user,)).fetchall()))


def taken_devices(db: sqlite3.Connection) -> set[int]:
    """Devices in a lease or out for a reset."""
    return {r[0] for r in db.execute("SELECT device_id FROM lease_devices UNION SELECT device_id FROM resets")}


def followed_pids(db: sqlite3.Connection) -> set[int]:
    """Every process a lease or a waiting request follows."""
    rows = db.execute("SELECT owner_pid, kernel_pid FROM leases UNION ALL SELECT owner_pid, NULL FROM requests").fetchall()
    return {p for row in rows for p in row if isinstance(p, int) and p > 0}


# ---------------------------------------------------------------------- requests


def insert_request(db: sqlite3.Connection, request: RequestRow) -> None:
    db.execute(
        "INSERT INTO requests (id, user, server, kernel_id, notebook, devices, card_type, quota, owner_pid,"
        " owner_started, owner_boot, requested_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (request.id, request.user, request.server, request.kernel_id, request.notebook, request.devices,
         request.card_type, request.quota, request.owner_pid, request.owner_started, request.owner_boot,
         request.requested_at),
    )


def request(db: sqlite3.Connection, request_id: str) -> RequestRow | None:
    row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
    return RequestRow.of(row) if row else None


def requests(db: sqlite3.Connection, *, waiting: bool = False) -> list[RequestRow]:
    """Every request (granted ones not yet picked up, refused ones not yet told), or only the waiting."""
    where = " WHERE lease_id IS NULL AND refused IS NULL" if waiting else ""
    return [RequestRow.of(r) for r in db.execute("SELECT * FROM requests" + where)]


def waiting_count(db: sqlite3.Connection, user: str) -> int:
    return db.execute("SELECT COUNT(*) FROM requests WHERE user=? AND lease_id IS NULL AND refused IS NULL",
                      (user,)).fetchone()[0]


def delete_request(db: sqlite3.Connection, request_id: str) -> None:
    db.execute("DELETE FROM requests WHERE id=?", (request_id,))


def refuse_request(db: sqlite3.Connection, request_id: str, why: str) -> None:
    db.execute("UPDATE requests SET refused=? WHERE id=?", (why, request_id))


# ---------------------------------------------------------------------- history


def ended_lease(db: sqlite3.Connection, lease_id: str) -> HistoryRow | None:
    row = db.execute("SELECT * FROM history WHERE lease_id=?", (lease_id,)).fetchone()
    return HistoryRow.of(row) if row else None


def history(db: sqlite3.Connection, *, before: tuple[float, str], limit: int) -> list[HistoryRow]:
    """Ended leases, newest first, that ended before ``before`` (ended_at, lease_id)."""
    ended_at, lease_id = before
    rows = db.execute("SELECT * FROM history WHERE ended_at < ? OR (ended_at = ? AND lease_id < ?)"
                      " ORDER BY ended_at DESC, lease_id DESC LIMIT ?", (ended_at, ended_at, lease_id, limit))
    return [HistoryRow.of(r) for r in rows]


def usage(db: sqlite3.Connection, *, since: float, after: tuple[float, str], limit: int, now: float) -> list[UsageRow]:
    """Leases held at some time after ``since``, ended or not, oldest grant first, granted after ``after``."""
    granted_at, lease_id = after
    rows = db.execute(
        "SELECT * FROM (SELECT lease_id, user, card_type, devices_json, granted_at, ended_at, end_reason FROM history"
        " WHERE ended_at > ? UNION ALL SELECT id, user, card_type, devices_json, granted_at, NULL, NULL FROM leases"
        " WHERE ? < ?) WHERE granted_at > ? OR (granted_at = ? AND lease_id > ?) ORDER BY granted_at, lease_id LIMIT ?",
        (since, since, now, granted_at, granted_at, lease_id, limit))
    return [UsageRow.of(r) for r in rows]


def prune_history(db: sqlite3.Connection, *, ended_before: float | None, keep: int) -> int:
    """Drop ended leases that ended before ``ended_before`` and beyond the newest ``keep`` (0: no bound)."""
    gone = 0
    if ended_before is not None:
        gone += db.execute("DELETE FROM history WHERE ended_at < ?", (ended_before,)).rowcount
    if keep > 0:
        gone += db.execute("DELETE FROM history WHERE lease_id IN (SELECT lease_id FROM history"
                           " ORDER BY ended_at DESC, lease_id DESC LIMIT -1 OFFSET ?)", (keep,)).rowcount
    return gone


def give_back_space(db: sqlite3.Connection) -> None:
    """Return freed pages to the file system (outside a transaction)."""
    db.execute("PRAGMA incremental_vacuum")


# ---------------------------------------------------------------------- resets


def resets(db: sqlite3.Connection) -> list[ResetRow]:
    return [ResetRow.of(r) for r in db.execute("SELECT * FROM resets ORDER BY device_id")]


def lease_resets(db: sqlite3.Connection, lease_id: str) -> list[ResetRow]:
    rows = db.execute("SELECT resets.* FROM resets JOIN lease_devices USING (device_id) WHERE lease_devices.lease_id=?"
                      " ORDER BY device_id", (lease_id,))
    return [ResetRow.of(r) for r in rows]


def mark_for_reset(db: sqlite3.Connection, device_ids: list[int], *, lease_id: str, reason: str, since: float) -> None:
    db.executemany("INSERT OR REPLACE INTO resets (device_id, lease_id, reason, since) VALUES (?,?,?,?)",
                   [(d, lease_id, reason, since) for d in device_ids])


def set_reset(db: sqlite3.Connection, device_id: int, *, waiting_for: str | None = None, done_at: float | None = None,
              heartbeat: int | None = None, failed: str | None = None) -> bool:
    """Where a card's reset stands (all None: to be run again); False if the card is not out for one."""
    return db.execute("UPDATE resets SET waiting_for=?, done_at=?, heartbeat=?, failed=?, beats=0 WHERE device_id=?",
                      (waiting_for, done_at, heartbeat, failed, device_id)).rowcount == 1


def note_beat(db: sqlite3.Connection, device_id: int, heartbeat: int) -> None:
    """A new heartbeat of a card after its reset: remembered, and counted."""
    db.execute("UPDATE resets SET heartbeat=?, beats=beats+1 WHERE device_id=?", (heartbeat, device_id))


def end_reset(db: sqlite3.Connection, device_id: int) -> None:
    """The card is back in the pool."""
    db.execute("DELETE FROM resets WHERE device_id=?", (device_id,))


def fail_reset(db: sqlite3.Connection, device_id: int, why: str) -> None:
    """The card stays out of the pool, unhealthy, with why."""
    db.execute("UPDATE resets SET failed=? WHERE device_id=?", (why, device_id))
