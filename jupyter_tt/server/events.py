"""Turns changes of the host-wide state into jupyter_events events.

Leases and queue entries change in any Jupyter server of the host, so each server looks at the
shared state every ``watch_interval`` seconds (reclaiming dead leases as it does) and emits what
changed. The frontend subscribes through ``/api/events/subscribe``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..scheduler import Lease, Scheduler, Waiting

SCHEMA_ID = "https://events.jupyter-tt.org/jupyter_tt/lease/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "lease" / "v1.yaml"


class StateWatcher:
    def __init__(self, scheduler: Scheduler, emit: Callable[[dict], None]):
        self.scheduler = scheduler
        self.emit = emit
        self.leases: dict[str, Lease] = {}
        self.queue: dict[str, Waiting] = {}

    def poll(self) -> None:
        """One look: reconcile, then emit the differences since the last look."""
        self.scheduler.reconcile()
        leases = {lease.id: lease for lease in self.scheduler.leases()}
        queue = {w.request_id: w for w in self.scheduler.queue()}
        simulated = self.scheduler.inventory.simulated
        ended = [i for i in self.leases if i not in leases]
        reasons = {h["lease_id"]: h["end_reason"] for h in self.scheduler.history(limit=max(len(ended), 1) * 4)}
        for lease_id in ended:
            old = self.leases[lease_id]
            self.emit(self._lease_event("lease-ended", old, simulated, reason=reasons.get(lease_id, "ended")))
        for lease_id, lease in leases.items():
            if lease_id not in self.leases:
                self.emit(self._lease_event("lease-granted", lease, simulated))
        for request_id, old in self.queue.items():
            if request_id not in queue:
                self.emit(self._request_event("request-left", old))
        for request_id, waiting in queue.items():
            old = self.queue.get(request_id)
            if old is None:
                self.emit(self._request_event("request-queued", waiting))
            elif old.position != waiting.position:
                self.emit(self._request_event("request-moved", waiting))
        self.leases, self.queue = leases, queue

    @staticmethod
    def _lease_event(action: str, lease: Lease, simulated: bool, **extra) -> dict:
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
