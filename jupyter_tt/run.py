"""``jupyter tt run --devices N -- CMD``: devices for any command, for as long as it runs.

Kernels get their devices from the provisioner; scripts, terminals, editors and batch jobs get them
here. The lease is asked as this process and then follows the command's process (like a kernel's), so
it lives while the command runs, also if ``jupyter tt run`` itself is killed, and ends when the command
exits. Under the scheduler service's enforcement (``scheduler/enforce.py``) this is how a process outside
Jupyter may open a device node at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from .caches import Caches, lease_environment
from .config import TTSettings
from .errors import TTError
from .kernels.mesh import mesh_device_name
from .scheduler import open_scheduler
from .scheduler.placement import ANY


def _say(text: str) -> None:
    print(f"jupyter tt run: {text}", file=sys.stderr, flush=True)


def run_with_devices(command: list[str], count: int, card_type: str = ANY, *, timeout: float | None = None,
                     settings: TTSettings | None = None) -> int:
    """Lease ``count`` devices, run ``command`` with ``TT_VISIBLE_DEVICES`` set to them, end the lease
    when it exits. Returns the command's exit status (128 + N when signal N ended it, 127 when it
    could not be started, 130 when the wait was interrupted)."""
    settings = settings or TTSettings()
    scheduler = open_scheduler(settings, server="jupyter tt run")
    try:
        lease = scheduler.acquire(count, card_type, timeout=timeout, on_wait=lambda w: _say(w.message))
    except KeyboardInterrupt:
        _say("interrupted while waiting: left the queue")
        return 130
    env = {**os.environ, **settings.environment(), "TT_VISIBLE_DEVICES": ",".join(lease.bdfs),
           "JUPYTER_TT_LEASE": lease.id}
    holds: list = []
    if lease.devices:  # tt-metal's caches in this user's folder, for this device set (jupyter_tt.caches)
        card_type = lease.card_types[0] if len(lease.card_types) == 1 else "mixed"
        try:
            cache_env, holds = lease_environment(Caches.from_settings(settings), lease.bdfs,
                                                 mesh_device_name(card_type, len(lease.devices), lease.chips),
                                                 os.environ.get("HF_MODEL"))
            env |= cache_env
        except TTError as e:
            _say(f"no cache folder for the lease ({e}); tt-metal uses its own default")
    described = ", ".join(f"{d.id} ({d.card_type} {d.bdf})" for d in lease.devices) or "none"
    _say(f"{lease.id}: device{'s' if len(lease.devices) != 1 else ''} {described}; running {' '.join(command)}")
    status = "could not start"
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {}
    try:
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as e:
            _say(f"cannot run {command[0]!r}: {e.strerror or e}")
            return 127
        scheduler.attach_kernel(lease.id, child.pid)
        # The terminal sends Ctrl-C to the command too: wait for it to exit rather than leave it running.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in forwarded:
            previous[sig] = signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
        code = child.wait()
        status = f"exited with {code}" if code >= 0 else f"ended by signal {-code}"
        return code if code >= 0 else 128 - code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        scheduler.release(lease.id, reason=f"command of `jupyter tt run` {status}")
        for hold in holds:
            hold.close()
