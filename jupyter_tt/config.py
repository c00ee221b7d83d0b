"""Settings shared by the server extension, the provisioner, the CLI and kernels.

Some settings have an environment variable (each says so in its help; docs/reference/configuration.md
lists them all, from that help), and every one is a traitlets trait on ``TTSettings``, e.g. ``c.TTSettings.inventory = "simulated:n150x2"`` in jupyter_server_config.py.
Environment variables give the defaults; config overrides them.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Dict, Float, Int, Unicode, default
from traitlets.config import Configurable

from .errors import ConfigError

#: Where the scheduler service listens (the shipped systemd unit creates /run/jupyter-tt).
SERVICE_SOCKET = "/run/jupyter-tt/scheduler.sock"
#: The scheduler service's own state folder (0700: only the service opens it).
SERVICE_STATE_DIR = "/var/lib/jupyter-tt"
#: Where an installed service's unit file lives. With it (or the service's state folder), the host is a
#: service host: ``auto`` never falls back to personal mode there, whether or not the socket exists now
#: (systemd removes /run/jupyter-tt while the unit is stopped, so that folder is no sign).
SERVICE_UNITS = ("/etc/systemd/system/jupyter-tt-scheduler.service", "/lib/systemd/system/jupyter-tt-scheduler.service",
                 "/usr/lib/systemd/system/jupyter-tt-scheduler.service")


def service_installed() -> bool:
    """Whether this host runs (or ran) the scheduler service: its unit file or its state folder exists."""
    return any(Path(p).exists() for p in (*SERVICE_UNITS, SERVICE_STATE_DIR))


def personal_state_dir() -> Path:
    """Personal mode's state: this user's, in their Jupyter data folder (0700)."""
    return Path(jupyter_data_dir()) / "tt-state"


def os_user() -> str:
    """The OS user running this process, from its uid (not from $USER, which the caller sets)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid-{os.getuid()}"


def default_user() -> str:
    """Whom personal mode accounts leases to: the hub user under JupyterHub, else the OS user. Only a
    label (the state is this user's own); the scheduler service names callers by their uid."""
    return os.environ.get("JUPYTERHUB_USER") or os_user()


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

    visible_devices = Unicode(
        help="The devices this server may divide between its kernels, as a Kubernetes device plugin or a "
        "container runtime hands them over, read as tt-umd reads TT_VISIBLE_DEVICES: integers are tt-umd "
        "logical ids (indices into the devices in PCI BDF order, not N of /dev/tenstorrent/N), other tokens "
        "PCI BDFs or parts of one, comma-separated; empty: every device the host shows. Env: JUPYTER_TT_VISIBLE_DEVICES, else an inherited "
        "TT_VISIBLE_DEVICES (one that no jupyter-tt lease set).",
    ).tag(config=True)

    container_runtimes = Unicode(
        help="Container runtimes whose running containers are asked which cards they were given (their CLIs on PATH, "
        "comma-separated): such a card is the container's, never granted, even before it opens the card (the "
        "vendor's `tt serve` container downloads weights first). Empty: none is asked. Env: JUPYTER_TT_CONTAINER_RUNTIMES.",
    ).tag(config=True)

    scheduler = Unicode(
        help=f"Which scheduler leases devices: 'auto' (the host's scheduler service at {SERVICE_SOCKET} where it is "
        f"installed, waiting for it while it restarts; else personal), 'unix:<socket path>' (a scheduler service), or 'personal' "
        f"(state private to this OS user: laptops, workshops, single-user card hosts). Env: JUPYTER_TT_SCHEDULER.",
    ).tag(config=True)

    state_dir = Unicode(
        help="Personal mode's state folder (0700; default: tt-state in this user's Jupyter data folder), or "
        f"the scheduler service's (default {SERVICE_STATE_DIR}). Env: JUPYTER_TT_STATE_DIR.",
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

    idle_timeout = Float(
        0.0,
        help="Seconds a kernel may sit idle holding devices while a queued request needs them; then it is told "
        "(a JupyterLab notification, the log, an idle-warning lease event) and after idle_grace shut down, its "
        "devices going to the queue. A busy kernel is never taken, nor anything while nobody waits. 0: off "
        "(personal mode's default). On a shared host the scheduler service's config sets it for every server.",
    ).tag(config=True)

    idle_grace = Float(60.0, help="Seconds between the idle warning and the shutdown (see idle_timeout).").tag(config=True)

    reset_after_crash = Bool(
        None, allow_none=True,
        help="Reset a card (tt-umd's WarmReset, or tt-smi -r) before anyone uses it again when its holder died "
        "(killed or crashed) instead of releasing it; until its firmware heartbeat advances again it is "
        "'resetting' and not leased. Default: on in the scheduler service where tt-umd or tt-smi is installed "
        "(a card nothing could reset must not be lost), off in personal mode.",
    ).tag(config=True)

    reset_tool = Unicode(
        "auto", help="What resets a card: 'auto' (tt-umd if importable, else tt-smi on PATH), 'tt-umd' or 'tt-smi'."
    ).tag(config=True)

    lease_burst = Int(
        20, help="Leases one user may take in quick succession from the scheduler service (a token bucket, as "
        "Slurm's rl_bucket_size): past it, a request is refused with 429 and when to retry. Root is exempt."
    ).tag(config=True)
    lease_rate = Float(
        2.0, help="Leases a second one user's bucket refills by (see lease_burst; 0: no limit)."
    ).tag(config=True)
    report_burst = Int(
        40, help="Reports (devices, leases, queue, history, usage) one user may ask the scheduler service for in "
        "quick succession; past it, 429 and when to retry (Slurm's rl_bucket_size for RPCs). Root is exempt."
    ).tag(config=True)
    report_rate = Float(
        20.0, help="Reports a second one user's bucket refills by (see report_burst; 0: no limit). Each Jupyter "
        "server asks about three a second (its look at leases, queue and devices every watch_interval)."
    ).tag(config=True)
    history_days = Float(
        90.0, help="Days an ended lease stays in the history (and in `jupyter tt usage`); older ones are pruned "
        "in the reconcile passes. 0: kept for ever."
    ).tag(config=True)
    history_rows = Int(
        100_000, help="Most ended leases the history keeps (the oldest go first); bounds the state's size."
    ).tag(config=True)

    cache_dir = Unicode(
        help="Where a lease's processes keep tt-metal's compiled kernels (TT_METAL_CACHE, one folder per device "
        "set) and converted weights (TT_CACHE_PATH for tt_transformers and vLLM, one folder per model; the ttnn "
        "backend's, one per checkpoint, ttnn version, mesh and weight format). A folder of this user's (0700), never "
        "the model's. Default: $XDG_CACHE_HOME/jupyter-tt (~/.cache/jupyter-tt). Env: JUPYTER_TT_CACHE_DIR.",
    ).tag(config=True)
    cache_limit_gb = Float(
        help="Most GiB the cache folder (cache_dir) may hold: past it, the least recently used entries that no "
        "process uses are removed when an entry is taken. 0: no bound. Default 100 (an 8B model's converted "
        "weights take about 9 GiB per mesh). Env: JUPYTER_TT_CACHE_LIMIT_GB.",
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

    @default("container_runtimes")
    def _default_container_runtimes(self):
        return os.environ.get("JUPYTER_TT_CONTAINER_RUNTIMES", "docker,podman")

    @default("visible_devices")
    def _default_visible_devices(self):
        if "JUPYTER_TT_VISIBLE_DEVICES" in os.environ:
            return os.environ["JUPYTER_TT_VISIBLE_DEVICES"]
        # A lease's own TT_VISIBLE_DEVICES (a kernel's, or `jupyter tt run`'s) is not a limit of the host.
        return "" if os.environ.get("JUPYTER_TT_LEASE") else os.environ.get("TT_VISIBLE_DEVICES", "")

    @default("cache_dir")
    def _default_cache_dir(self):
        return os.environ.get("JUPYTER_TT_CACHE_DIR", "")

    @default("cache_limit_gb")
    def _default_cache_limit_gb(self):
        value = os.environ.get("JUPYTER_TT_CACHE_LIMIT_GB", "100")
        try:
            limit = float(value)
        except ValueError:
            limit = -1.0
        if not limit >= 0:
            raise ConfigError(f"JUPYTER_TT_CACHE_LIMIT_GB={value!r}: give a number of GiB (0 for no bound)")
        return limit

    @default("scheduler")
    def _default_scheduler(self):
        return os.environ.get("JUPYTER_TT_SCHEDULER", "auto")

    @default("state_dir")
    def _default_state_dir(self):
        return os.environ.get("JUPYTER_TT_STATE_DIR") or str(personal_state_dir())

    def scheduler_socket(self) -> str | None:
        """The scheduler service's socket these settings name, or None for personal mode."""
        value = self.scheduler.strip()
        if value == "personal":
            return None
        if value.startswith("unix:") and len(value) > 5:
            return value[5:]
        if value == "auto":
            return SERVICE_SOCKET if Path(SERVICE_SOCKET).is_socket() or service_installed() else None
        raise ConfigError(f"JUPYTER_TT_SCHEDULER={value!r}: use auto, personal or unix:/path/to/scheduler.sock")

    @default("user")
    def _default_user(self):
        return default_user()

    def quota_for(self, user: str) -> int:
        """The device quota for ``user`` (0: unlimited)."""
        return int(self.user_quotas.get(user, self.quota))

    def environment(self) -> dict[str, str]:
        """The variables a kernel needs to find the same inventory and state as its server."""
        socket_path = self.scheduler_socket()
        return {
            "JUPYTER_TT_SCHEDULER": f"unix:{socket_path}" if socket_path else "personal",
            "JUPYTER_TT_INVENTORY": self.inventory,
            "JUPYTER_TT_SYSFS_ROOT": self.sysfs_root,
            "JUPYTER_TT_VISIBLE_DEVICES": self.visible_devices,
            "JUPYTER_TT_CONTAINER_RUNTIMES": self.container_runtimes,
            "JUPYTER_TT_STATE_DIR": self.state_dir,
            "JUPYTER_TT_CACHE_DIR": self.cache_dir,
            "JUPYTER_TT_CACHE_LIMIT_GB": f"{self.cache_limit_gb:g}",
        }
