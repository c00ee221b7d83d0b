"""Turns changes of the host-wide state into jupyter_events events.

Leases and queue entries change in any Jupyter server of the host (or in the scheduler service), so
each server looks at the state every ``watch_interval`` seconds (reclaiming dead leases as it does)
and emits what changed. The frontend subscribes through ``/api/events/subscribe``.
"""

from __future__ import annotations

from pathlib import Path

from ..scheduler import Lease, Report, SchedulerAPI, Waiting

#: Ended leases whose reasons one look asks for (the rest say "ended"): a look stays a few calls long
#: when a whole class's kernels end at once.
MAX_REASONS_PER_LOOK = 16

SCHEMA_ID = "https://events.jupyter-tt.org/jupyter_tt/lease/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "lease" / "v1.yaml"


class StateWatcher:
    """Remembers the last look at the state; ``look()`` is blocking (run it off the event loop)."""

    def __init__(self, scheduler: SchedulerAPI):
        self.scheduler = scheduler
        self.leases: dict[str, Lease] = {}
        self.queue: dict[str, Waiting] = {}
        #: The devices document /metrics reports: renewed by every look and by the server's
        #: telemetry samples.
        self.report: Report | None = None
        self.states: dict[int, str] | None = None  # device id -> state at the last look

    def look(self) -> list[dict]:
        """Reconcile, then the events that say what changed since the last look."""
        self.scheduler.reconcile()
        leases = {lease.id: lease for lease in self.scheduler.leases()}
        queue = {w.request_id: w for w in self.scheduler.queue()}
        simulated = self.scheduler.inventory.simulated
        ended = [i for i in self.leases if i not in leases]
        events = []
        for i, lease_id in enumerate(ended):  # each one's own reason, however many others ended meanwhile
            old = self.leases[lease_id]
            found = self.scheduler.ended_lease(lease_id) if i < MAX_REASONS_PER_LOOK else None
            events.append(self.lease_event("lease-ended", old, simulated, reason=found[1] if found else "ended"))
        for lease_id, lease in leases.items():
            if lease_id not in self.leases:
                events.append(self.lease_event("lease-granted", lease, simulated))
        for request_id, gone in self.queue.items():
            if request_id not in queue:
                events.append(self._request_event("request-left", gone))
        for request_id, waiting in queue.items():
            before = self.queue.get(request_id)
            if before is None:
                events.append(self._request_event("request-queued", waiting))
            elif before.position != waiting.position:
                events.append(self._request_event("request-moved", waiting))
        self.leases, self.queue = leases, queue
        # Device states change without a lease event too: a card out for a reset after a crash (its
        # lease lives on through the kernel's restart), back from it, or unhealthy.
        self.report = self.scheduler.report()
        states = {d.id: d.state.value for d in self.report.devices}
        changed = sorted(i for i, state in states.items() if self.states is not None and self.states.get(i) != state)
        if changed:
            events.append({"action": "device-state", "devices": changed, "states": [states[i] for i in changed],
                           "simulated": simulated})
        self.states = states
        return events

    @staticmethod
    def lease_event(action: str, lease: Lease, simulated: bool, **extra) -> dict:
        return {
            "action": action,
            "lease_id": lease.id,
            "user": lease.user,
            "kernel_id": lease.kernel_id,
            "notebook": lease.notebook,
            "devices": lease.device_ids,
            "card_type": lease.card_type,
            "simulated": simulated,
            **extra,
        }

    @staticmethod
    def _request_event(action: str, waiting: Waiting) -> dict:
        return {
            "action": action,
            "request_id": waiting.request_id,
            "user": waiting.user,
            "kernel_id": waiting.kernel_id,
            "notebook": waiting.notebook,
            "count": waiting.devices,
            "card_type": waiting.card_type,
            "position": waiting.position,
        }
