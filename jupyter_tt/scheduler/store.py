"""The host-wide state: one SQLite file in WAL mode per device set.

Why SQLite: every Jupyter server on the host (one per user under JupyterHub) opens the same file,
and each scheduling pass is one transaction that commits whole or not at all, also when its
process is killed mid-way. Writers first take a blocking ``flock`` on ``<name>.lock``: the kernel
wakes the next writer the moment the lock is free and drops it when a holder dies, where SQLite's
own busy handler would sleep and retry (up to 100 ms a try under contention). ``lease_devices`` has
the device id as primary key: a device cannot be in two leases, whatever the code above does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

from ..errors import ConfigError

SCHEMA_VERSION = 2

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
    owner_started REAL NOT NULL,
    kernel_pid INTEGER,               -- the kernel the lease follows, once launched
    kernel_started REAL,
    kernel_gone_since REAL,           -- first pass that saw the kernel gone while its owner lived
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
    requested_at REAL NOT NULL,
    lease_id TEXT                     -- set when granted, then the asker picks it up and deletes the row
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
"""


# Columns added since version 1, for state files that servers of an older release created.
ADDED_COLUMNS = [("leases", "notebook TEXT"), ("requests", "notebook TEXT"), ("history", "notebook TEXT")]


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
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Connection(sqlite3.Connection):
    lock_fd: int = -1


def connect(state_dir: str | os.PathLike, name: str) -> Connection:
    """Open (creating if needed) ``<state_dir>/<name>.sqlite3``, shared by every user of the host."""
    directory = Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the scheduler state folder {directory} ({e.strerror}): set JUPYTER_TT_STATE_DIR "
            f"to a folder every Jupyter server on this host can write"
        ) from e
    path = directory / f"{name}.sqlite3"
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False, factory=Connection)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _migrate(db)
    except sqlite3.Error as e:
        raise ConfigError(
            f"cannot open the scheduler state {path}: {e}. Check that the folder is writable by every "
            f"Jupyter server on this host, or set JUPYTER_TT_STATE_DIR to one that is"
        ) from e
    lock = directory / f"{name}.lock"
    db.lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    for suffix in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".lock"):  # other users' servers write too
        with contextlib.suppress(OSError):
            os.chmod(directory / f"{name}{suffix}", 0o666)
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection):
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
