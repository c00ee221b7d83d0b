"""Host-wide device scheduler: exclusive leases, a fair queue, crash-safe reclaiming."""

from __future__ import annotations

import threading

from ..config import TTSettings
from ..devices import open_inventory
from .placement import ANY, check_card_type, place
from .scheduler import Lease, LeasedDevice, Scheduler, Waiting

__all__ = ["ANY", "Lease", "LeasedDevice", "Scheduler", "Waiting", "check_card_type", "open_scheduler", "place"]

_shared: dict[tuple, Scheduler] = {}
_lock = threading.Lock()


def open_scheduler(settings: TTSettings | None = None, *, server: str | None = None) -> Scheduler:
    """The scheduler for these settings, one per process (it holds the inventory's health memory)."""
    settings = settings or TTSettings()
    user = settings.user
    key = (settings.inventory, settings.sysfs_root, settings.state_dir, user, settings.quota_for(user))
    with _lock:
        scheduler = _shared.get(key)
        if scheduler is None:
            scheduler = Scheduler(
                open_inventory(settings.inventory, settings.sysfs_root),
                settings.state_dir,
                user=user,
                quota=settings.quota_for(user),
                restart_grace=settings.restart_grace,
                server=server,
            )
            _shared[key] = scheduler
        return scheduler
