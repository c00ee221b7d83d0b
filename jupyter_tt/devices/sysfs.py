"""Real devices, read from the tt-kmd driver's sysfs and procfs files.

Layout (all under ``root``, ``/`` on a real host; tests point it at a generated tree)::

    sys/class/tenstorrent/tenstorrent!N/   tt_card_type, tt_serial, tt_asic_id, tt_aiclk, tt_heartbeat, tt_*_ver
    sys/class/tenstorrent/tenstorrent!N/device -> the PCI device (its name is the BDF): numa_node,
        hwmon/hwmonK/{temp1_input, temp1_max, in0_input, curr1_input, power1_input}
    dev/tenstorrent/N                      the device node
    proc/driver/tenstorrent/N/pids         processes holding the node open (driver >= 2.5); without it, the
                                           holders are found in /proc/*/fd (all of them only as root)

Any attribute may be missing (older driver or firmware); it is then reported as unknown.

Inside a container (a Kubernetes pod), sysfs still lists every card of the host, but only the nodes
the pod was given exist in its ``/dev/tenstorrent``: there a card without a node is not this
server's, and is left out rather than reported unhealthy. ``visible`` (a device plugin's
``TT_VISIBLE_DEVICES``) narrows the devices further, anywhere, read as tt-umd reads that variable
(``PCIDevice::enumerate_devices``): an integer is a *logical id*, an index into the devices whose
nodes exist sorted by BDF (not N of ``/dev/tenstorrent/N``: the two differ where the driver
numbered the cards in another order), and a BDF, or any part of one, selects the devices whose BDF
contains it. A token that selects nothing selects nothing here too (tt-umd refuses to start), and
``visible_problems`` says which.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .base import CHIPS_PER_CARD, Device, InventoryBackend, Telemetry
from .containers import ContainerWatch, by_device

_CLASS_ENTRY = re.compile(r"^tenstorrent!(\d+)$")
_FIRMWARE = {
    "fw_bundle": "tt_fw_bundle_ver",
    "arc_fw": "tt_arc_fw_ver",
    "eth_fw": "tt_eth_fw_ver",
    "m3bl_fw": "tt_m3bl_fw_ver",
    "m3app_fw": "tt_m3app_fw_ver",
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path, scale: float = 1.0) -> float | None:
    text = _read(path)
    try:
        return round(float(text.split()[0]) / scale, 3) if text else None
    except ValueError:
        return None


def _bdf(entry: Path) -> str:
    pci = entry / "device"
    return pci.resolve().name if pci.exists() else "unknown"


def in_container(root: Path) -> bool:
    """Whether ``root`` is a container's view: Docker's or Podman's marker file, or (on ``/``) a
    Kubernetes pod's service variable."""
    if (root / ".dockerenv").exists() or (root / "run/.containerenv").exists():
        return True
    return str(root.resolve()) == "/" and "KUBERNETES_SERVICE_HOST" in os.environ


class SysfsInventory(InventoryBackend):
    """Devices of this host as the driver exposes them.

    A device is unhealthy when its node vanished (listed until the process restarts), its
    firmware heartbeat did not advance for ``heartbeat_timeout`` seconds (judged across calls, so a
    long-running server notices; a one-shot reader cannot), or it is hotter than its max.
    """

    kind = "sysfs"

    def __init__(self, root: str = "/", heartbeat_timeout: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 *, visible: str = "", container: bool | None = None, containers: ContainerWatch | None = None):
        self.root = Path(root)
        #: Containers beside us, whose cards are theirs (None: not looked at).
        self.containers = containers
        self.visible = frozenset(v.strip() for v in visible.split(",") if v.strip())
        self.container = in_container(self.root) if container is None else container
        self.heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._heartbeats: dict[int, tuple[int, float]] = {}  # id -> (value, when it last changed)
        self._seen: dict[int, Device] = {}
        self._selection: frozenset[int] | None = None  # what ``visible`` resolved to
        self._open_nodes: dict[str, set[int]] | None = None

    @property
    def class_dir(self) -> Path:
        return self.root / "sys/class/tenstorrent"

    @property
    def key(self) -> str:
        root = str(self.root.resolve())
        key = "sysfs" if root == "/" else "sysfs-" + hashlib.sha1(root.encode()).hexdigest()[:10]
        if self.visible:  # another set of devices: another scheduler state
            key += "-visible-" + hashlib.sha1(",".join(sorted(self.visible)).encode()).hexdigest()[:10]
        return key

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "visible": sorted(self.visible) or None,
                "container": self.container}

    def node(self, i: int) -> Path:
        """Device ``i``'s node under ``root`` (what the scheduler service fences)."""
        return self.root / "dev/tenstorrent" / str(i)

    def present(self) -> bool:
        """Whether the driver shows any device here (used by ``inventory=auto``)."""
        return any(_CLASS_ENTRY.match(p.name) for p in self._entries())

    def _entries(self) -> list[Path]:
        try:
            return list(self.class_dir.iterdir())
        except OSError:
            return []

    def devices(self) -> list[Device]:
        found = {}
        selected, _ = self._selected()
        self._open_nodes = None  # /proc/*/fd, read once per call where needed
        for entry in self._entries():
            match = _CLASS_ENTRY.match(entry.name)
            if match and self._ours(int(match[1]), selected):
                device = self._read_device(int(match[1]), entry)
                found[device.id] = device
        for i, last in self._seen.items():
            if i not in found:
                found[i] = replace(last, problem=f"device node {last.path} vanished (card lost or driver reloaded)")
        self._seen.update({i: d for i, d in found.items() if d.problem is None or i not in self._seen})
        if self.containers is not None:
            held = by_device(self.containers.claims(), found)
            found = {i: replace(d, containers=held[i]) if i in held else d for i, d in found.items()}
        return [found[i] for i in sorted(found)]

    def _ours(self, i: int, selected: frozenset[int] | None) -> bool:
        """Whether device ``i`` is this server's to lease: in ``visible`` (if set), and, in a container,
        one whose node the container was given (or one seen before, whose loss is then reported)."""
        if selected is not None and i not in selected:
            return False
        return not self.container or i in self._seen or self.node(i).exists()

    def _by_bdf(self) -> list[tuple[str, int]]:
        """(BDF, N) of every device whose node exists, in BDF order: tt-umd's logical ids are its indices."""
        found = []
        for entry in self._entries():
            match = _CLASS_ENTRY.match(entry.name)
            if match and self.node(int(match[1])).exists():
                found.append((_bdf(entry), int(match[1])))
        return sorted(found)

    def _selected(self) -> tuple[frozenset[int] | None, list[str]]:
        """The device numbers ``visible`` selects (None: no limit), and the tokens that select none.

        Resolved once every token selects a device, and kept: a node that vanishes later must not
        shift the logical ids onto other cards (the lost one is then reported, not replaced)."""
        if not self.visible:
            return None, []
        if self._selection is not None:
            return self._selection, []
        by_bdf = self._by_bdf()
        selected, unmatched = set(), []
        for token in sorted(self.visible):
            if token.isdigit():
                hits = {by_bdf[int(token)][1]} if int(token) < len(by_bdf) else set()
            else:
                hits = {n for bdf, n in by_bdf if token.lower() in bdf.lower()}
            selected |= hits
            if not hits:
                unmatched.append(token)
        if not unmatched:
            self._selection = frozenset(selected)
        return frozenset(selected), unmatched

    @property
    def visible_problems(self) -> list[str]:
        """Why a ``visible`` token selects no device here (empty when every token selects one)."""
        count = len(self._by_bdf())
        return [f"TT_VISIBLE_DEVICES token {t!r} selects no device: integers are tt-umd logical ids, 0 to {count - 1} "
                f"here (devices in BDF order), and other tokens must be part of a device's BDF" for t in self._selected()[1]]

    def _read_device(self, i: int, entry: Path) -> Device:
        pci = entry / "device"
        bdf = _bdf(entry)
        raw_type = (_read(entry / "tt_card_type") or "unknown").lower()
        card_type = raw_type if raw_type in CHIPS_PER_CARD else "unknown"
        numa = _number(pci / "numa_node")
        telemetry = self._telemetry(entry, pci)
        node = self.node(i)
        problem = None
        if not node.exists():
            problem = f"device node {node} is missing (is tt-kmd loaded?)"
        elif telemetry.heartbeat is not None and self._heartbeat_stopped(i, telemetry.heartbeat):
            problem = f"firmware heartbeat stopped at {telemetry.heartbeat} (no change for {self.heartbeat_timeout:g} s)"
        elif (
            telemetry.temperature_c is not None
            and telemetry.temperature_max_c is not None
            and telemetry.temperature_c > telemetry.temperature_max_c
        ):
            problem = f"temperature {telemetry.temperature_c:.1f} °C is above its max {telemetry.temperature_max_c:.1f} °C"
        return Device(
            id=i,
            path=f"/dev/tenstorrent/{i}",
            bdf=bdf,
            card_type=card_type,
            chips=CHIPS_PER_CARD[card_type],
            numa_node=int(numa) if numa is not None and numa >= 0 else None,
            serial=_read(entry / "tt_serial"),
            asic_id=_read(entry / "tt_asic_id"),
            firmware={name: v for name, attr in _FIRMWARE.items() if (v := _read(entry / attr))},
            telemetry=telemetry,
            problem=problem,
            holders=self._holders(i),
        )

    def _telemetry(self, entry: Path, pci: Path) -> Telemetry:
        hwmon = next(iter(sorted((pci / "hwmon").glob("hwmon*"))), None) if pci.exists() else None
        heartbeat = _number(entry / "tt_heartbeat")

        def sensor(name: str, scale: float) -> float | None:
            return _number(hwmon / name, scale) if hwmon else None

        return Telemetry(
            temperature_c=sensor("temp1_input", 1000),
            temperature_max_c=sensor("temp1_max", 1000),
            power_w=sensor("power1_input", 1_000_000),
            current_a=sensor("curr1_input", 1000),
            voltage_v=sensor("in0_input", 1000),
            aiclk_mhz=_number(entry / "tt_aiclk"),
            axiclk_mhz=_number(entry / "tt_axiclk"),
            arcclk_mhz=_number(entry / "tt_arcclk"),
            heartbeat=int(heartbeat) if heartbeat is not None else None,
        )

    def _heartbeat_stopped(self, i: int, value: int) -> bool:
        now = self._clock()
        last = self._heartbeats.get(i)
        if last is None or last[0] != value:
            self._heartbeats[i] = (value, now)
            return False
        return now - last[1] > self.heartbeat_timeout

    def _holders(self, i: int) -> tuple[int, ...]:
        """Processes that hold device ``i``'s node open: tt-kmd's pids file, else every process's fds."""
        pids = self.root / "proc/driver/tenstorrent" / str(i) / "pids"
        if pids.exists():  # the driver keeps the list (empty: nobody holds it)
            return tuple(sorted({int(tok) for tok in (_read(pids) or "").split() if tok.isdigit()}))
        if self._open_nodes is None:
            self._open_nodes = open_files(str(self.node(0).parent.resolve()) + "/")
        return tuple(sorted(self._open_nodes.get(str(self.node(i).resolve()), ())))


def open_files(prefix: str) -> dict[str, set[int]]:
    """Which processes hold files under ``prefix`` open, by path (from /proc/PID/fd; a process whose fds
    this user may not read, or that exits meanwhile, is skipped)."""
    held: dict[str, set[int]] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return held
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                held.setdefault(target, set()).add(int(pid))
    return held

