"""Generates tt-kmd sysfs/procfs trees in a temp dir: the stand-in for hosts with Wormhole cards."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Card:
    card_type: str | None = "n300"  # None: the attribute is missing
    numa_node: int = 0
    temperature_c: float | None = 48.5
    temperature_max_c: float | None = 90.0
    power_w: float | None = 65.0
    heartbeat: int | None = 1000
    aiclk: int | None = 1000
    serial: str | None = None
    device_node: bool = True
    holders: list[int] = field(default_factory=list)
    pids_file: bool = True  # False: a driver older than 2.5, which lists no holders (they are found in /proc/*/fd)
    firmware: dict = field(default_factory=lambda: {"tt_fw_bundle_ver": "18.3.0", "tt_arc_fw_ver": "2.32.0", "tt_eth_fw_ver": "7.0.0"})


N150 = lambda **kw: Card(card_type="n150", **kw)  # noqa: E731
N300 = lambda **kw: Card(card_type="n300", **kw)  # noqa: E731

HOSTS = {
    "n150": [N150()],
    "n300": [N300()],
    "loudbox": [N300(numa_node=0), N300(numa_node=0), N300(numa_node=1), N300(numa_node=1)],
    "mixed": [N150(numa_node=0), N300(numa_node=0), N150(numa_node=1), N300(numa_node=1)],
}


def _write(path: Path, value) -> None:
    if value is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


class SysfsTree:
    """A fake root holding the files the sysfs backend reads. Edit cards with ``set`` / ``remove``."""

    def __init__(self, root: Path, cards: list[Card], buses: list[int] | None = None):
        self.root = Path(root)
        self.buses = buses  # PCI bus of card N (default 4 + N): another order than the driver's numbering
        self.cards: list[Card] = []
        for card in cards:
            self.add(card)

    def bdf(self, i: int) -> str:
        return f"0000:{self.buses[i] if self.buses else 4 + i:02x}:00.0"

    def add(self, card: Card) -> int:
        i = len(self.cards)
        self.cards.append(card)
        pci = self.root / "sys/bus/pci/devices" / self.bdf(i)
        pci.mkdir(parents=True, exist_ok=True)
        _write(pci / "vendor", "0x1e52")
        _write(pci / "device", "0x401e")
        entry = self.root / "sys/class/tenstorrent" / f"tenstorrent!{i}"
        entry.mkdir(parents=True, exist_ok=True)
        if not (entry / "device").exists():
            os.symlink(os.path.relpath(pci, entry), entry / "device")
        self.set(i)
        return i

    def set(self, i: int, **changes) -> None:
        card = self.cards[i]
        for key, value in changes.items():
            setattr(card, key, value)
        entry = self.root / "sys/class/tenstorrent" / f"tenstorrent!{i}"
        pci = self.root / "sys/bus/pci/devices" / self.bdf(i)
        hwmon = pci / "hwmon/hwmon0"
        for f in ("tt_card_type", "tt_serial", "tt_heartbeat", "tt_aiclk", "tt_asic_id"):
            (entry / f).unlink(missing_ok=True)
        _write(entry / "tt_card_type", card.card_type)
        _write(entry / "tt_serial", card.serial or f"TT{1000 + i}")
        _write(entry / "tt_asic_id", f"{0xABC000 + i:016x}")
        _write(entry / "tt_heartbeat", card.heartbeat)
        _write(entry / "tt_aiclk", card.aiclk)
        for name, value in card.firmware.items():
            _write(entry / name, value)
        _write(pci / "numa_node", card.numa_node)
        shutil.rmtree(hwmon, ignore_errors=True)
        _write(hwmon / "name", "wormhole")
        _write(hwmon / "temp1_input", None if card.temperature_c is None else int(card.temperature_c * 1000))
        _write(hwmon / "temp1_max", None if card.temperature_max_c is None else int(card.temperature_max_c * 1000))
        _write(hwmon / "power1_input", None if card.power_w is None else int(card.power_w * 1_000_000))
        _write(hwmon / "in0_input", 850)
        _write(hwmon / "curr1_input", 70000)
        node = self.root / "dev/tenstorrent" / str(i)
        if card.device_node:
            _write(node, "")
        else:
            node.unlink(missing_ok=True)
        pids = self.root / "proc/driver/tenstorrent" / str(i) / "pids"
        if card.pids_file:
            _write(pids, "\n".join(map(str, card.holders)))
        else:
            pids.unlink(missing_ok=True)

    def beat(self) -> None:
        """One firmware heartbeat of every card that has one (written whole: a reader never sees half)."""
        for i, card in enumerate(self.cards):
            if card.heartbeat is not None:
                card.heartbeat += 1
                path = self.root / "sys/class/tenstorrent" / f"tenstorrent!{i}" / "tt_heartbeat"
                tmp = path.with_name(".tt_heartbeat")
                tmp.write_text(f"{card.heartbeat}\n")
                os.replace(tmp, path)

    @contextlib.contextmanager
    def beating(self, interval: float = 0.5):
        """Live firmware, for as long as the block runs: a long-running reader (the scheduler service)
        otherwise sees every heartbeat stop after ``heartbeat_timeout`` and the cards turn unhealthy."""
        stop = threading.Event()

        def run():
            while not stop.wait(interval):
                self.beat()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def remove(self, i: int) -> None:
        """The card is gone: its class entry and node disappear."""
        shutil.rmtree(self.root / "sys/class/tenstorrent" / f"tenstorrent!{i}")
        (self.root / "dev/tenstorrent" / str(i)).unlink(missing_ok=True)


def make_host(root: Path, host: str | list[Card], buses: list[int] | None = None) -> SysfsTree:
    cards = [Card(**vars(c)) for c in HOSTS[host]] if isinstance(host, str) else host
    return SysfsTree(root, cards, buses)
