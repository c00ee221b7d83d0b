"""Settings shared by the server extension, the provisioner, the CLI and kernels.

Every setting has an environment variable (CONTRACT.md) and a traitlets equivalent on
``TTSettings``, e.g. ``c.TTSettings.inventory = "simulated:n150x2"`` in jupyter_server_config.py.
Environment variables give the defaults; config overrides them.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from traitlets import Dict, Float, Int, Unicode, default
from traitlets.config import Configurable

#: Host-wide state lives here when it is writable (create it once: ``install -d -m 1777``).
SYSTEM_STATE_DIR = "/var/lib/jupyter-tt"


def default_state_dir() -> Path:
    """The system path if this process may write there, else a per-user one (not host-wide)."""
    system = Path(SYSTEM_STATE_DIR)
    if system.is_dir() and os.access(system, os.W_OK | os.X_OK):
        return system
    try:
        system.mkdir(mode=0o1777, parents=True)
        system.chmod(0o1777)  # mkdir's mode is masked by the umask; every user's server must write here
        return system
    except OSError:
        return Path(jupyter_data_dir()) / "tt-state"


def default_user() -> str:
    """Under JupyterHub the hub user, else the OS user running this process."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


class TTSettings(Configurable):
    """Configuration of jupyter-tt (traitlets section ``TTSettings``)."""

    inventory = Unicode(
        help="Where devices come from: 'auto' (real devices if any, else simulated n300x4), "
        "'sysfs' (real devices only), or 'simulated:<spec>' such as 'simulated:n150x2,n300x1'. "
        "Env: JUPYTER_TT_INVENTORY.",
    ).tag(config=True)

    sysfs_root = Unicode(
        help="Prefix under which sys/class/tenstorrent, sys/bus/pci, dev/tenstorrent and "
        "proc/driver/tenstorrent are read. Env: JUPYTER_TT_SYSFS_ROOT.",
    ).tag(config=True)

    state_dir = Unicode(
        help=f"Host-wide scheduler state, shared by every Jupyter server on the host. Default "
        f"{SYSTEM_STATE_DIR} when writable, else a per-user folder. Env: JUPYTER_TT_STATE_DIR.",
    ).tag(config=True)

    user = Unicode(help="Whom leases are accounted to. Default: $JUPYTERHUB_USER, else the OS user.").tag(
        config=True
    )

    quota = Int(0, help="Most devices one user may hold at once (0: no limit).").tag(config=True)

    user_quotas = Dict(
        value_trait=Int(), help="Per-user overrides of `quota`, e.g. {'alice': 8}."
    ).tag(config=True)

    wait_timeout = Float(
        600.0, help="Seconds a kernel start waits in the queue when its kernelspec sets no wait_timeout."
    ).tag(config=True)

    restart_grace = Float(
        15.0,
        help="Seconds a lease outlives its kernel process while the kernel's server is alive, so that "
        "the server's auto-restart keeps the same devices. The lease ends at once when the server is gone.",
    ).tag(config=True)

    watch_interval = Float(
        1.0, help="Seconds between the server's reconcile passes (reclaiming dead leases, emitting events)."
    ).tag(config=True)
    telemetry_interval = Float(
        5.0, help="Seconds between the server's telemetry samples (the history the JupyterLab panel draws)."
    ).tag(config=True)
    telemetry_samples = Int(120, help="Telemetry samples kept per device (at 5 s: the last 10 minutes).").tag(
        config=True
    )

    @default("inventory")
    def _default_inventory(self):
        return os.environ.get("JUPYTER_TT_INVENTORY", "auto")

    @default("sysfs_root")
    def _default_sysfs_root(self):
        return os.environ.get("JUPYTER_TT_SYSFS_ROOT", "/")

    @default("state_dir")
    def _default_state_dir(self):
        return os.environ.get("JUPYTER_TT_STATE_DIR") or str(default_state_dir())

    @default("user")
    def _default_user(self):
        return default_user()

    def quota_for(self, user: str) -> int:
        """The device quota for ``user`` (0: unlimited)."""
        return int(self.user_quotas.get(user, self.quota))

    def environment(self) -> dict[str, str]:
        """The variables a kernel needs to find the same inventory and state as its server."""
        return {
            "JUPYTER_TT_INVENTORY": self.inventory,
            "JUPYTER_TT_SYSFS_ROOT": self.sysfs_root,
            "JUPYTER_TT_STATE_DIR": self.state_dir,
        }
