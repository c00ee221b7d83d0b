"""Device inventory: which Tenstorrent devices this host has, found by backend name.

``open_inventory("auto" | "sysfs" | "simulated:<spec>", sysfs_root)`` returns an
:class:`InventoryBackend`; ``SysfsInventory`` reads the driver, ``SimulatedInventory`` makes devices up.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import CARD_TYPES, CHIPS_PER_CARD, Device, InventoryBackend, Telemetry
from .containers import ContainerWatch
from .simulated import DEFAULT_SPEC, SimulatedInventory, parse_spec
from .sysfs import SysfsInventory

__all__ = [
    "CARD_TYPES",
    "CHIPS_PER_CARD",
    "Device",
    "InventoryBackend",
    "SimulatedInventory",
    "SysfsInventory",
    "Telemetry",
    "open_inventory",
    "parse_spec",
]


def open_inventory(spec: str = "auto", sysfs_root: str = "/", visible: str = "",
                   container_runtimes: str = "") -> InventoryBackend:
    """The inventory named by ``spec`` (``JUPYTER_TT_INVENTORY``'s syntax); real devices limited to
    ``visible`` (``TTSettings.visible_devices``), if set; cards given to the running containers of
    ``container_runtimes`` ("docker,podman"; empty: none looked at) held by them."""
    spec = (spec or "auto").strip()
    runtimes = [r.strip() for r in container_runtimes.split(",") if r.strip()]
    watch = ContainerWatch(runtimes) if runtimes else None
    if spec == "auto":
        sysfs = SysfsInventory(sysfs_root, visible=visible, containers=watch)
        return sysfs if sysfs.present() else SimulatedInventory(DEFAULT_SPEC)
    if spec == "sysfs":
        sysfs = SysfsInventory(sysfs_root, visible=visible, containers=watch)
        if not sysfs.present():
            raise ConfigError(
                f"inventory 'sysfs' asked for, but no Tenstorrent device is listed under "
                f"{sysfs.class_dir}: install and load tt-kmd, or set JUPYTER_TT_INVENTORY=auto "
                f"(or simulated:n300x4) to run on a simulated inventory"
            )
        return sysfs
    if spec.startswith("simulated"):
        _, _, rest = spec.partition(":")
        return SimulatedInventory(rest or DEFAULT_SPEC)
    raise ConfigError(
        f"unknown inventory {spec!r}: use 'auto', 'sysfs' or 'simulated:<spec>' such as 'simulated:n300x4'"
    )
