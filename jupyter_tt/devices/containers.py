"""Cards given to containers beside us (Docker, Podman), read as Tenstorrent's own tools read them.

The vendor's ``tt serve`` and ``tt-model serve`` run tt-inference-server in a container given
``--device /dev/tenstorrent/N`` per card and labelled ``org.tenstorrent.tt-model.devices=N,...``. Such a
container holds no descriptor while it downloads weights (minutes), so the driver's holder list does
not show it; its card is taken all the same. A card is a container's, as the vendor's ``tt`` CLI reads
it (PyPI ``tenstorrent`` 1.2.1, ``backends/serving/chips.py`` ``_claims``, itself tt-model's reading), when
a running container (``docker ps -q``, then ``docker inspect``):

- carries the label ``org.tenstorrent.tt-model.devices`` naming it, or
- shares the host's IPC namespace (``HostConfig.IpcMode`` ``host`` or ``container:...``: the one where
  UMD's chip lock lives) and is ``Privileged`` (every card), or was given its node or the whole folder
  (``HostConfig.Devices[].PathOnHost``, ``Mounts[].Source``: ``/dev/tenstorrent/N``; ``/``, ``/dev`` or
  ``/dev/tenstorrent`` for every card).

The runtime's CLI is asked in a background thread at most every ``ttl`` seconds, with a deadline: a
hung Docker daemon delays nobody's lease. Where no runtime is installed or it does not answer, that is
said once (``problem``) and the cards are read from the driver alone.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("jupyter_tt.devices")

#: The container runtimes asked, in order; each one found on PATH is asked.
RUNTIMES = ("docker", "podman")
DEVICES_LABEL = "org.tenstorrent.tt-model.devices"
_NODE = re.compile(r"^/dev/tenstorrent/(\d+)$")
_WHOLE_FOLDER = {"/", "/dev", "/dev/tenstorrent"}
#: Containers looked at per runtime and answer; more are ignored (a bounded list).
MAX_CONTAINERS = 512


@dataclass(frozen=True)
class Claim:
    """A running container's cards: ``devices`` by N of ``/dev/tenstorrent/N``, or None for every card."""

    container: str
    devices: frozenset[int] | None


def claim_of(info: dict) -> Claim | None:
    """What one ``docker inspect`` record takes, by the vendor's rule (module docstring); None if nothing."""
    name = str(info.get("Name") or info.get("Id") or "?").lstrip("/")[:128]
    labels = (info.get("Config") or {}).get("Labels") or {}
    taken = {int(x) for x in str(labels.get(DEVICES_LABEL) or "").split(",") if x.strip().isdigit()}
    host = info.get("HostConfig") or {}
    ipc = str(host.get("IpcMode") or "")
    if ipc == "host" or ipc.startswith("container:"):
        if host.get("Privileged"):
            return Claim(name, None)
        paths = [str(d.get("PathOnHost") or "") for d in host.get("Devices") or [] if isinstance(d, dict)]
        paths += [str(m.get("Source") or "") for m in info.get("Mounts") or [] if isinstance(m, dict)]
        for path in filter(None, paths):
            path = path.rstrip("/") or "/"
            if path in _WHOLE_FOLDER:
                return Claim(name, None)
            match = _NODE.match(path)
            if match:
                taken.add(int(match.group(1)))
    return Claim(name, frozenset(taken)) if taken else None


def by_device(claims: Iterable[Claim], ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """Device id -> the names of the containers that hold it, for the devices ``ids``."""
    ids = list(ids)
    held: dict[int, list[str]] = {}
    for claim in claims:
        for device_id in ids if claim.devices is None else sorted(claim.devices & set(ids)):
            held.setdefault(device_id, []).append(claim.container)
    return {i: tuple(sorted(set(names))) for i, names in held.items()}


class ContainerWatch:
    """The running containers' claims, refreshed in the background (``claims()`` never waits)."""

    def __init__(self, runtimes: Iterable[str] = RUNTIMES, *, ttl: float = 5.0, timeout: float = 10.0,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 which: Callable[[str], str | None] = shutil.which):
        self.runtimes = tuple(runtimes)
        self.ttl, self.timeout = ttl, timeout
        self._run, self._which = run, which
        self._claims: list[Claim] = []
        self._read_at: float | None = None
        self._refreshing = threading.Lock()
        #: Why no runtime could be asked (said once in the log), or None.
        self.problem: str | None = None

    def claims(self, wait: bool = False) -> list[Claim]:
        """The last claims read; starts a refresh when they are older than ``ttl``. ``wait``: read them now and
        return those (after any refresh already under way, which may have read an older state), for a
        one-shot reader such as ``jupyter tt devices``."""
        if wait:
            with self._refreshing:
                self._read_all()
            return self._claims
        stale = self._read_at is None or time.monotonic() - self._read_at > self.ttl
        if stale and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="jupyter-tt-containers", daemon=True).start()
        return self._claims

    def _refresh(self) -> None:
        """A background refresh: the caller took ``_refreshing``."""
        try:
            self._read_all()
        finally:
            self._refreshing.release()

    def _read_all(self) -> None:
        claims, problems = [], []
        found = [(name, path) for name in self.runtimes if (path := self._which(name))]
        for name, path in found:
            got = self._read(name, path)
            if isinstance(got, str):
                problems.append(got)
            else:
                claims += got
        problem = "; ".join(problems) if problems else None if found else (
            f"no container runtime ({', '.join(self.runtimes)}) on PATH: cards are read from the driver alone")
        if problem and problem != self.problem:
            log.info("jupyter-tt: containers beside us are not seen: %s", problem)
        self._claims, self.problem, self._read_at = claims, problem, time.monotonic()

    def _read(self, name: str, path: str) -> list[Claim] | str:
        """The claims of ``name``'s running containers, or why they could not be read."""
        try:
            ps = self._run([path, "ps", "-q", "--no-trunc"], capture_output=True, text=True, timeout=self.timeout,
                           stdin=subprocess.DEVNULL)
            ids = ps.stdout.split()[:MAX_CONTAINERS] if ps.returncode == 0 else None
            if ids is None:
                return f"{name} ps exited with {ps.returncode}: {(ps.stderr.strip().splitlines() or ['?'])[-1][:200]}"
            if not ids:
                return []
            inspected = self._run([path, "inspect", *ids], capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"{name} did not answer within {self.timeout:g} s"
        except OSError as e:
            return f"cannot run {name}: {e}"
        try:  # a container gone between ps and inspect makes inspect exit 1, with the others' records
            infos = json.loads(inspected.stdout)
        except ValueError:
            infos = None
        if not isinstance(infos, list):
            return f"{name} inspect gave no list of containers (exit status {inspected.returncode})"
        return [c for c in (claim_of(i) for i in infos[:MAX_CONTAINERS] if isinstance(i, dict)) if c is not None]
