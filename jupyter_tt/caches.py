"""The caches a lease's processes fill: tt-metal's compiled kernels and converted weights.

tt-metal and tt_transformers each keep a cache, and both need a place chosen for them:

- ``TT_METAL_CACHE``: tt-metal's JIT cache of compiled kernels (default ``~/.cache/tt-metal-cache``).
  Two processes that compile into one folder at once corrupt it (tt-metal issues #24087, #20870,
  #29164: "cannot map elf file", then a hang, on LoudBoxes; PR #31110 documents that concurrent
  processes need their own). So each device set has its own: two leases that exist at once never
  hold the same device, so they never share one, while a kernel restarted on the same cards
  finds its kernels compiled.
- ``TT_CACHE_PATH``: tt_transformers' converted weights (``models/tt_transformers/tt/model_config.py``
  adds the device name, e.g. ``N300``, below it). Without it they go to
  ``model_cache/<HF_MODEL>/<device>``, which for an absolute ``HF_MODEL`` is inside the model folder:
  a shared, read-only folder fails. So each model server gets one folder per model, below the
  user's cache.
- our own ttnn backend's converted weights (``ttnn.as_tensor`` files), one folder per checkpoint
  contents, ttnn version, mesh and weight format (``serving/backends/ttnn/weights.py``).

Every entry is a folder under ``<cache dir>/<kind>/<key>`` in this user's own cache folder (0700).
A process using an entry holds a shared ``flock`` on its ``.lock`` file; the cache is bounded by
``TTSettings.cache_limit_gb``, and when it is over, the least recently used entries that nobody holds
are removed (tt-metal's own caches grow without bound: tt-metal issue #51297).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import ConfigError
from .files import open_private, private_dir

GIB = 1 << 30


class CacheKind(str, Enum):
    """What an entry holds; each kind is a folder of the cache dir."""

    TT_METAL = "tt-metal"  # TT_METAL_CACHE: compiled kernels, per device set
    TT_WEIGHTS = "tt-weights"  # TT_CACHE_PATH: tt_transformers' (and vLLM's on cards) converted weights, per model
    TTNN_WEIGHTS = "ttnn-weights"  # our ttnn backend's converted weights, per checkpoint, ttnn, mesh and format


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the cache, as ``jupyter tt cache`` lists it."""

    kind: CacheKind
    key: str
    path: Path
    size: int  # bytes
    last_used: float  # seconds since the epoch
    held: bool  # a process uses it now
    about: dict  # what it was made for (devices, model, mesh...)

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "key": self.key, "path": str(self.path), "size": self.size,
                "last_used": self.last_used, "held": self.held, "about": self.about}


def key_of(*parts: object) -> str:
    """A short, stable folder name for what an entry is made of."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jupyter-tt`` (``~/.cache/jupyter-tt``): this user's own, never the model's folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-tt"


class Hold:
    """A process's use of an entry (a shared flock on its ``.lock``): while it is held, the entry is not evicted."""

    def __init__(self, path: Path):
        """Raises FileNotFoundError when the entry was evicted meanwhile (``Caches.use`` makes it again)."""
        self.path = path
        fd = open_private(path / ".lock", append=True)
        fcntl.flock(fd, fcntl.LOCK_SH)  # never blocks for long: an evictor holds LOCK_EX for one check
        try:  # an evictor may have renamed the entry away between the open and the lock
            same = os.stat(path / ".lock", follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            raise FileNotFoundError(f"cache entry {path} was evicted while it was taken")
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class Caches:
    """This user's cache folder: entries by kind and key, bounded to ``limit_bytes`` (0: no bound)."""

    def __init__(self, root: str | os.PathLike | None = None, limit_bytes: int = 0):
        self.root = Path(root) if root else default_cache_dir()
        self.limit_bytes = limit_bytes

    @classmethod
    def from_settings(cls, settings) -> Caches:
        return cls(settings.cache_dir or None, int(settings.cache_limit_gb * GIB))

    def folder(self, kind: CacheKind, key: str) -> Path:
        return self.root / kind.value / key

    def memo_dir(self) -> Path:
        """A private folder of small remembered values (checkpoint digests), not an entry: never evicted."""
        private_dir(self.root, "jupyter-tt's cache folder", setting="JUPYTER_TT_CACHE_DIR")
        return private_dir(self.root / "digests", "jupyter-tt's cache folder", setting="JUPYTER_TT_CACHE_DIR")

    def entry(self, kind: CacheKind, key: str, about: dict | None = None) -> Path:
        """The entry's folder, created private if missing, marked used now; ``about`` says what it is for."""
        private_dir(self.root, "jupyter-tt's cache folder", setting="JUPYTER_TT_CACHE_DIR")
        private_dir(self.root / kind.value, "jupyter-tt's cache folder", setting="JUPYTER_TT_CACHE_DIR")
        path = private_dir(self.folder(kind, key), "jupyter-tt's cache folder", setting="JUPYTER_TT_CACHE_DIR")
        if about is not None and not (path / "about.json").exists():
            with os.fdopen(open_private(path / "about.json"), "w") as f:
                json.dump(about, f)
        self.touch(path)
        return path

    @staticmethod
    def touch(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.close(open_private(path / ".lock", append=True))
            os.utime(path / ".lock")

    def use(self, kind: CacheKind, key: str, about: dict | None = None) -> tuple[Path, Hold]:
        """The entry, held for this process (close the Hold when done), and the cache brought under its bound."""
        for _ in range(3):
            path = self.entry(kind, key, about)
            try:
                hold = Hold(path)
            except (FileNotFoundError, ConfigError):  # evicted by another process between the two: make it again
                continue
            self.evict()
            return path, hold
        raise ConfigError(f"cannot take the cache entry {self.folder(kind, key)}: another process keeps removing it. "
                          f"Set JUPYTER_TT_CACHE_LIMIT_GB higher, or JUPYTER_TT_CACHE_DIR to a folder of this process's own")

    # ------------------------------------------------------------------ listing and eviction

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""
        found = []
        for kind in CacheKind:
            base = self.root / kind.value
            if not base.is_dir():
                continue
            for path in base.iterdir():
                if not path.is_dir() or path.is_symlink() or path.name.startswith("."):
                    continue
                found.append(CacheEntry(kind=kind, key=path.name, path=path, size=_size(path),
                                        last_used=_last_used(path), held=_held(path), about=_about(path)))
        return sorted(found, key=lambda e: e.last_used)

    def evict(self, keep: Iterable[Path] = ()) -> list[CacheEntry]:
        """Remove the least recently used entries that nobody holds until the cache fits its bound; returns them."""
        if not self.limit_bytes:
            return []
        entries = self.entries()
        total = sum(e.size for e in entries)
        kept = {Path(p) for p in keep}
        removed = []
        for e in entries:
            if total <= self.limit_bytes:
                break
            if e.path in kept or not _remove_unless_held(e.path):
                continue
            total -= e.size
            removed.append(e)
        return removed

    def clear(self) -> list[CacheEntry]:
        """Remove every entry that nobody holds."""
        return [e for e in self.entries() if _remove_unless_held(e.path)]

    def total(self) -> int:
        return sum(e.size for e in self.entries())


def _size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _last_used(path: Path) -> float:
    try:
        return (path / ".lock").stat().st_mtime
    except OSError:
        return path.stat().st_mtime


def _about(path: Path) -> dict:
    try:
        about = json.loads((path / "about.json").read_text())
        return about if isinstance(about, dict) else {}
    except (OSError, ValueError):
        return {}


def _held(path: Path) -> bool:
    try:
        fd = os.open(path / ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _remove_unless_held(path: Path) -> bool:
    """Remove an entry that no process holds, atomically with respect to a new holder: the entry is
    renamed away while this process holds its lock exclusively, so a process that takes it next
    creates a fresh one."""
    lock = path / ".lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError:
        return False
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        doomed = path.with_name(f".evicted-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, doomed)
        except OSError:
            return False
    finally:
        if fd is not None:
            os.close(fd)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


# ----------------------------------------------------------------------------- what a lease's processes get


def jit_key(bdfs: Iterable[str]) -> tuple[str, dict]:
    """The key of a device set's ``TT_METAL_CACHE`` (and what it is for)."""
    devices = sorted(bdfs)
    return key_of("devices", *devices), {"devices": devices}


def tt_weights_key(model: str, mesh_device: str) -> tuple[str, dict]:
    """The key of tt_transformers' converted weights of ``model`` (a repo id or folder) on ``mesh_device``:
    a folder model by its real path and when its config last changed, so that new weights get a new entry.
    tt_transformers adds the device name below ``TT_CACHE_PATH`` itself; it is in the key too, so that
    each entry is one model on one mesh."""
    identity: list[object] = [model, mesh_device]
    config = Path(model) / "config.json"
    with contextlib.suppress(OSError):
        identity += [str(Path(model).resolve()), config.stat().st_mtime_ns]
    return key_of(*identity), {"model": model, "mesh_device": mesh_device}


def lease_environment(caches: Caches, bdfs: Iterable[str], mesh_device: str, model: str | None = None
                      ) -> tuple[dict[str, str], list[Hold]]:
    """The cache variables of a process on a lease, and the holds to keep while it runs:
    ``TT_METAL_CACHE`` for its device set and, where the model is known (``HF_MODEL``), ``TT_CACHE_PATH``
    for that model on ``mesh_device``. Blocking file I/O: call it off an event loop."""
    key, about = jit_key(bdfs)
    jit, jit_hold = caches.use(CacheKind.TT_METAL, key, about)
    env, holds = {"TT_METAL_CACHE": str(jit)}, [jit_hold]
    if model:
        key, about = tt_weights_key(model, mesh_device)
        weights, hold = caches.use(CacheKind.TT_WEIGHTS, key, about)
        env["TT_CACHE_PATH"] = str(weights)
        holds.append(hold)
    return env, holds
