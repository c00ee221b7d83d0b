"""The scheduler's typed contract: what a lease, a waiting request, a usage record, a pending reset
and a report of the devices are, as every layer sees them (the scheduler, the service's protocol,
its client, the API). ``to_json`` gives each one's shape in the REST API (``api_schemas/``).

They live apart from ``scheduler.py`` so that the API and the wire format depend on these, not on
the scheduler that makes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum

from ..devices import Device
from ..errors import RequestError, TTError
from .placement import ANY, check_card_type
from .processes import ProcessRef


@dataclass(frozen=True, kw_only=True)
class DeviceRequest:
    """What a kernel (or a command) asks for: how many devices, of one card type or ``any``.

    ``parse`` is the one check of a request's shape, for every way one comes in: a kernelspec's
    provisioner config, ``jupyter tt kernelspec install``, JupyterLab's device picker, the scheduler.
    """

    devices: int
    card_type: str = ANY

    @classmethod
    def parse(cls, devices: object, card_type: object = ANY, *, least: int = 0, what: str = "devices",
              error: type[TTError] = RequestError) -> DeviceRequest:
        """A valid request, or ``error`` saying what to send: ``devices`` a whole number of at least
        ``least`` (0: a kernel with no device; the scheduler leases 1 or more), ``card_type`` known."""
        if type(devices) is not int or devices < least:  # bool is no count
            bound = "0 or more (0: none)" if least == 0 else f"of at least {least}"
            raise error(f"{what} must be a whole number of devices {bound}, not {devices!r}")
        try:
            kind = check_card_type(card_type)
        except RequestError as e:
            raise error(e.message) from None
        return cls(devices=devices, card_type=kind)


@dataclass(frozen=True)
class LeasedDevice:
    id: int
    path: str
    bdf: str
    card_type: str
    chips: int


@dataclass(frozen=True)
class Lease:
    """Devices held exclusively by one kernel (or process) of one user."""

    id: str
    user: str
    server: str
    kernel_id: str | None
    card_type: str
    devices: tuple[LeasedDevice, ...]
    pid: int  # the kernel's while it runs, else the process that asked
    requested_at: float
    granted_at: float
    notebook: str | None = None  # the kernel's session path (a notebook), where the asker knew it
    #: False on another user's lease as that user's viewers get it: only id, user, devices and since.
    owned: bool = True

    def public(self) -> "Lease":
        """What any user of the host may see of this lease: who holds which devices since when."""
        return replace(self, server="", kernel_id=None, pid=0, notebook=None, owned=False)

    @property
    def device_ids(self) -> list[int]:
        return [d.id for d in self.devices]

    @property
    def bdfs(self) -> list[str]:
        return [d.bdf for d in self.devices]

    @property
    def card_types(self) -> list[str]:
        return sorted({d.card_type for d in self.devices})

    @property
    def chips(self) -> int:
        return sum(d.chips for d in self.devices)

    def to_json(self) -> dict:
        if not self.owned:
            return {"id": self.id, "devices": self.device_ids, "user": self.user, "since": self.granted_at}
        return {
            "id": self.id,
            "devices": self.device_ids,
            "bdfs": self.bdfs,
            "card_types": self.card_types,
            "chips": self.chips,
            "user": self.user,
            "kernel_id": self.kernel_id,
            "server": self.server,
            "pid": self.pid,
            "since": self.granted_at,
            "requested_at": self.requested_at,
            "notebook": self.notebook,
        }


@dataclass(frozen=True)
class Waiting:
    """A request in the queue: where it stands."""

    request_id: str
    user: str
    kernel_id: str | None
    devices: int
    card_type: str
    position: int  # 1 is next
    queued: int  # requests waiting in all
    since: float
    notebook: str | None = None
    #: its user holds so much that granting it now would exceed their quota: it waits for their own
    #: leases to end, and taking anyone else's devices (idle reclaim) would not help it
    over_quota: bool = False
    #: free cards set aside for it while it waits for the rest (``queue.plan``): nobody behind it takes them
    reserved: int = 0

    def public(self) -> "Waiting":
        """What any user of the host may see of this request."""
        return replace(self, kernel_id=None, notebook=None)

    @property
    def message(self) -> str:
        what = f"{self.devices} {'device' if self.card_type == ANY else self.card_type}{'s' if self.devices > 1 else ''}"
        ahead = self.position - 1
        kept = (f"; {self.reserved} free card{'s are' if self.reserved != 1 else ' is'} kept for you until the rest free up"
                if self.reserved else "")
        return (
            f"waiting for {what}: position {self.position} in the queue "
            f"({ahead} request{'s' if ahead != 1 else ''} ahead of you){kept}"
        )

    def to_json(self) -> dict:
        return {
            "id": self.request_id,
            "user": self.user,
            "kernel_id": self.kernel_id,
            "devices": self.devices,
            "card_type": self.card_type,
            "position": self.position,
            "since": self.since,
            "notebook": self.notebook,
            "reserved": self.reserved,
        }


@dataclass(frozen=True, kw_only=True)
class UsageRecord:
    """One lease's use of devices within a period (``usage_records``): what billing and reports read."""

    lease_id: str
    user: str
    card_type: str  # what was asked for ("any", or a card type)
    devices: tuple[int, ...]
    chips: int
    granted_at: float
    ended_at: float | None  # None: still held
    end_reason: str | None
    #: within the period asked for (a lease granted before it counts from its start)
    device_hours: float
    chip_hours: float


@dataclass(frozen=True, kw_only=True)
class PendingReset:
    """A card of a lease that is reset before its kernel starts again (``lease_resets``): the kernel
    died abnormally and is being restarted on the same lease."""

    device_id: int
    reason: str  # how the kernel ended
    waiting_for: str | None  # why the reset has not run yet (a process holds the card's node)
    done: bool  # reset: the scheduler waits for its firmware heartbeat to advance
    failed: str | None  # the reset or its check failed: the card is unhealthy and out of the lease's use

    @property
    def message(self) -> str:
        if self.failed:
            return f"device {self.device_id} failed its reset: {self.failed}"
        if self.waiting_for:
            return f"device {self.device_id} waits for its reset: {self.waiting_for}"
        return f"device {self.device_id} is {'checked after' if self.done else 'in'} its reset"


@dataclass(frozen=True, kw_only=True)
class UsageTotal:
    """One user's use of devices within a period (``jupyter tt usage``)."""

    user: str
    leases: int
    device_hours: float
    chip_hours: float

    def to_json(self) -> dict:
        return asdict(self)


def usage_totals(records: list[UsageRecord]) -> list[UsageTotal]:
    """Per user: leases, device-hours and chip-hours of ``records``, the heaviest user first."""
    totals: dict[str, UsageTotal] = {}
    for r in records:
        was = totals.get(r.user) or UsageTotal(user=r.user, leases=0, device_hours=0.0, chip_hours=0.0)
        totals[r.user] = replace(was, leases=was.leases + 1, device_hours=was.device_hours + r.device_hours,
                                 chip_hours=was.chip_hours + r.chip_hours)
    return sorted(totals.values(), key=lambda t: -t.device_hours)


class DeviceStatus(StrEnum):
    """Where a device stands (a report's ``state``)."""

    FREE = "free"
    LEASED = "leased"
    RESETTING = "resetting"  # out of the pool until its reset after a crash is done and checked
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, kw_only=True)
class HeldOpen:
    """A process that holds a device node outside its lease. Another user's is shown without its
    pid, name and command line (``hidden``): only root and its own user see those."""

    pid: int | None
    name: str | None
    user: str | None
    cmdline: str | None

    def hidden(self) -> HeldOpen:
        return replace(self, pid=None, name=None, cmdline=None)


@dataclass(frozen=True, kw_only=True)
class ResetStatus:
    """A device's reset after a crash, while it lasts."""

    reason: str  # how the holder ended
    waiting_for: str | None  # why it has not run yet
    failed: str | None
    done: bool  # reset: the scheduler waits for the firmware's heartbeat to advance


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """One device as a report shows it: the card, where it stands, and who holds it."""

    device: Device  # its ``problem`` says why a failed reset left it unhealthy
    state: DeviceStatus
    held_outside: bool  # free, but a process holds its node open: it is not granted until they close it
    reset: ResetStatus | None = None
    lease_id: str | None = None
    user: str | None = None
    kernel_id: str | None = None  # these two: the viewer's own lease only
    notebook: str | None = None
    unaccounted_processes: tuple[HeldOpen, ...] = ()

    @property
    def id(self) -> int:
        return self.device.id

    def to_json(self) -> dict:
        return {
            **self.device.to_json(),
            "held_outside": self.held_outside,
            "state": self.state.value,
            "reset": asdict(self.reset) if self.reset else None,
            "lease_id": self.lease_id,
            "user": self.user,
            "kernel_id": self.kernel_id,
            "notebook": self.notebook,
            "unaccounted_processes": [asdict(p) for p in self.unaccounted_processes],
        }


@dataclass(frozen=True, kw_only=True)
class SchedulerInfo:
    """Which scheduler answers, and whether it fences device nodes."""

    mode: str  # "personal" or "service"
    state_dir: str
    enforcing: bool
    enforcement: str  # what fencing there is, or why there is none
    socket: str | None = None  # the service's

    def to_json(self) -> dict:
        data = asdict(self)
        if self.socket is None:
            del data["socket"]
        return data


@dataclass(frozen=True, kw_only=True)
class Report:
    """Everything about the host's devices in one document (``GET /jupyter-tt/api/devices``), as one
    viewer may see it: other users' leases and requests in their public view."""

    inventory: dict  # the inventory's ``describe()``
    scheduler: SchedulerInfo
    devices: tuple[DeviceState, ...]
    leases: tuple[Lease, ...]
    queue: tuple[Waiting, ...]

    @property
    def simulated(self) -> bool:
        return bool(self.inventory.get("simulated"))

    def to_json(self) -> dict:
        return {
            "inventory": dict(self.inventory),
            "scheduler": self.scheduler.to_json(),
            "devices": [d.to_json() for d in self.devices],
            "unaccounted_processes": [{**asdict(p), "device": d.id} for d in self.devices for p in d.unaccounted_processes],
            "leases": [lease.to_json() for lease in self.leases],
            "queue": [w.to_json() for w in self.queue],
        }


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a long list, and the cursor that asks for the next (None: this was the last)."""

    items: list
    next: str | None


@dataclass(frozen=True)
class Caller:
    """Whom a call acts for: the user leases are accounted to, the process that asks (the lease or
    request follows it), that user's quota (0: none) and a label for the asking server."""

    user: str
    process: ProcessRef
    quota: int = 0
    server: str = ""
