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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3

from ..errors import ConfigError
from ..files import private_dir

SCHEMA_VERSION = 5
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
    heartbeat INTEGER,                -- the heartbeat read just after the reset: it must change again
    failed TEXT                       -- why the card could not be reset: it stays out, unhealthy
);
"""


# Columns added since version 1, for state files that servers of an older release created.
ADDED_COLUMNS = [
    ("leases", "notebook TEXT"), ("requests", "notebook TEXT"), ("history", "notebook TEXT"),  # 2
    ("leases", "owner_boot TEXT"), ("leases", "kernel_boot TEXT"), ("requests", "owner_boot TEXT"),  # 3
    ("requests", "refused TEXT"),  # 5
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
