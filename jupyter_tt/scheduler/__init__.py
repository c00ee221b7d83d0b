"""Host-wide device scheduler: exclusive leases, a fair queue, crash-safe reclaiming.

``open_scheduler`` picks the scheduler the settings name: the host's scheduler service (``ServiceClient``)
or personal mode (``Scheduler`` on this user's own state). Both are a ``SchedulerAPI``.
"""

from __future__ import annotations

import threading

from ..config import TTSettings
from ..devices import open_inventory
from .api import SchedulerAPI, call
from .leases import (
    Caller,
    DeviceRequest,
    DeviceState,
    DeviceStatus,
    Lease,
    LeasedDevice,
    PendingReset,
    Report,
    UsageTotal,
    Waiting,
)
from .placement import ANY, check_card_type, most_at_once, place
from .scheduler import Scheduler

__all__ = ["ANY", "Caller", "DeviceRequest", "DeviceState", "DeviceStatus", "Lease", "LeasedDevice", "PendingReset",
           "Report", "Scheduler", "SchedulerAPI", "UsageTotal", "Waiting", "call", "check_card_type", "most_at_once",
           "open_scheduler", "place"]

_shared: dict[tuple, SchedulerAPI] = {}
_lock = threading.Lock()


def open_scheduler(settings: TTSettings | None = None, *, server: str | None = None) -> SchedulerAPI:
    """The scheduler for these settings, one per process (it holds a connection, or the inventory's health memory)."""
    settings = settings or TTSettings()
    socket_path = settings.scheduler_socket()
    if socket_path:
        key: tuple = ("service", socket_path)
    else:
        user = settings.user
        key = (settings.inventory, settings.sysfs_root, settings.visible_devices, settings.state_dir, user,
               settings.quota_for(user))
    with _lock:
        scheduler = _shared.get(key)
        if scheduler is None:
            if socket_path:
                from .client import ServiceClient

                scheduler = ServiceClient(socket_path)
            else:
                scheduler = Scheduler(
                    open_inventory(settings.inventory, settings.sysfs_root, settings.visible_devices,
                                   settings.container_runtimes),
                    settings.state_dir,
                    user=settings.user,
                    quota=settings.quota_for(settings.user),
                    restart_grace=settings.restart_grace,
                    server=server,
                    reset_after_crash=bool(settings.reset_after_crash),  # None: off in personal mode
                    reset_tool=settings.reset_tool,
                    history_days=settings.history_days,
                    history_rows=settings.history_rows,
                )
            _shared[key] = scheduler
        return scheduler
