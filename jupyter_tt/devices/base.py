"""What a device is, and the one interface every inventory backend implements."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field, fields

#: Chips behind one device node, by card type. An n300's second chip is reached over Ethernet
#: from the first and has no node of its own, so the unit of allocation is the node (the card).
CHIPS_PER_CARD = {
    "n150": 1,
    "n300": 2,
    "galaxy-wormhole": 1,
    "p100a": 1,
    "p150a": 1,
    "p150b": 1,
    "p300": 2,
    "unknown": 1,
}
CARD_TYPES = tuple(t for t in CHIPS_PER_CARD if t != "unknown")


@dataclass(frozen=True)
class Telemetry:
    """Readings of one device; ``None`` where the driver or firmware does not report one."""

    temperature_c: float | None = None
    temperature_max_c: float | None = None
    power_w: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    aiclk_mhz: float | None = None
    axiclk_mhz: float | None = None
    arcclk_mhz: float | None = None
    heartbeat: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Device:
    """One device node (``/dev/tenstorrent/N``): a card with ``chips`` chips."""

    id: int
    path: str
    bdf: str
    card_type: str
    chips: int
    numa_node: int | None = None
    serial: str | None = None
    asic_id: str | None = None
    firmware: dict = field(default_factory=dict)
    telemetry: Telemetry = field(default_factory=Telemetry)
    #: ``None`` when healthy, else why not ("temperature 95.0 °C is above its max 90.0 °C").
    problem: str | None = None
    #: PIDs holding the node open, from the driver (``/proc/driver/tenstorrent/N/pids``).
    holders: tuple[int, ...] = ()
    #: Running containers given this card (``containers.py``): it is theirs, open or not yet.
    containers: tuple[str, ...] = ()
    simulated: bool = False

    @property
    def held_outside(self) -> bool:
        """Whether something other than a lease of ours may be using the card: a process holds its node, or a
        container was given it."""
        return bool(self.holders or self.containers)

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict:
        data = asdict(self)
        data["telemetry"] = self.telemetry.to_json()
        data["holders"] = list(self.holders)
        data["containers"] = list(self.containers)
        data["healthy"] = self.healthy
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Device":
        """The device ``to_json`` described (what the scheduler service sends its clients)."""
        known = {f.name for f in fields(cls)} - {"telemetry", "holders", "containers"}
        return cls(**{k: v for k, v in data.items() if k in known}, telemetry=Telemetry(**data.get("telemetry", {})),
                   holders=tuple(data.get("holders", ())), containers=tuple(data.get("containers", ())))


class InventoryBackend(abc.ABC):
    """Lists the devices of this host (or of a simulated one).

    ``devices()`` is called often (every scheduling pass and every telemetry poll), so it must be
    cheap: it reads a few small files per device and never blocks on hardware.
    """

    #: "sysfs" or "simulated" (the report's ``inventory.kind``).
    kind: str = ""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """Identifies the device set: processes with equal keys share one scheduler state."""

    @abc.abstractmethod
    def devices(self) -> list[Device]:
        """The devices now, sorted by id, unhealthy ones included (with ``problem`` set)."""

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    def describe(self) -> dict:
        """``inventory`` object of the devices API."""
        return {"kind": self.kind, "key": self.key, "simulated": self.simulated}
