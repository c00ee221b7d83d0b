"""The ``jupyter_tt`` server extension (enabled on install)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from tornado.ioloop import IOLoop, PeriodicCallback

from .._version import __version__
from ..config import TTSettings
from ..kernels.provisioner import cancel_waits
from ..scheduler import DeviceStatus, Scheduler, call, open_scheduler
from ..scheduler.loop import ReconcileLoop
from . import metrics
from .events import SCHEMA_ID, SCHEMA_PATH, StateWatcher
from .handlers import DevicesHandler, KernelDevicesHandler, LeaseHandler, LeasesHandler, QueueHandler, UsageHandler
from .idle import IdleReclaimer, ServingActivity, idle_kernel
from .proxy import ServeProxyHandler

#: Seconds a stopping server gives kernels still starting to finish (or fail) before it shuts kernels down.
STOP_STARTS_WAIT = 20.0


class JupyterTTApp(ExtensionApp):
    """Serves the device API, emits lease events and reclaims dead leases every ``watch_interval``.

    Scheduler calls never run on the event loop: each goes to a worker thread with a deadline
    (``jupyter_tt.scheduler.call``), so a slow or unreachable scheduler delays answers, not the server.
    """

    name = "jupyter_tt"
    description = "Tenstorrent devices for Jupyter kernels"
    version = __version__

    @property
    def _server(self) -> ServerApp:
        """The Jupyter server this extension runs in (set before ``initialize_settings``)."""
        assert self.serverapp is not None
        return self.serverapp

    def initialize_settings(self) -> None:
        self.tt_settings = TTSettings(parent=self.serverapp)
        self.scheduler = open_scheduler(self.tt_settings)
        # Kernels without a lease must see no device: tt-provisioner sets the variable for kernels
        # that hold one, every other kernel inherits this empty value from the server.
        os.environ["TT_VISIBLE_DEVICES"] = ""
        # What the server may divide stays known to its terminals and CLI calls (the same state).
        os.environ["JUPYTER_TT_VISIBLE_DEVICES"] = self.tt_settings.visible_devices
        inventory = self.scheduler.inventory.describe()
        self.log.info(
            "jupyter-tt %s: %s inventory%s, %s scheduler (%s), user %s",
            __version__,
            inventory["kind"],
            f" ({inventory['spec']}, SIMULATED)" if inventory["simulated"] else "",
            self.scheduler.mode,
            self.scheduler.state_dir,
            self.scheduler.user,
        )
        event_logger = self._server.event_logger
        assert event_logger is not None  # jupyter_server >= 2 always has one
        if SCHEMA_ID not in event_logger.schemas.schema_ids:
            event_logger.register_event_schema(SCHEMA_PATH)
        self._emit = lambda data: event_logger.emit(schema_id=SCHEMA_ID, data=self.with_path(data))
        self.watcher = StateWatcher(self.scheduler)
        self._loop = IOLoop.current()
        self._idle = IdleReclaimer(timeout=0.0, grace=0.0)
        self._serving = ServingActivity()  # a kernel whose model server works is not idle
        self._restarts: dict[str, asyncio.Future] = {}  # kernel id -> its restart on chosen devices
        # Personal mode with reset_after_crash: this server resets cards whose holder died (the service
        # does it itself on a shared host).
        resets = self.scheduler.run_resets if isinstance(self.scheduler, Scheduler) and self.scheduler.reset_after_crash else None
        self._passes = ReconcileLoop(self._look, interval=self.tt_settings.watch_interval, run_resets=resets,
                                     log=self.log)
        self._loop.add_callback(self._start_passes)
        self.scheduler.listeners.append(self._changed)
        # A short telemetry history per device for the JupyterLab panel's sparklines.
        self.telemetry_history: dict[int, deque] = {}
        self._loop.add_callback(self._sample_telemetry)
        self._sample = PeriodicCallback(self._sample_telemetry, self.tt_settings.telemetry_interval * 1000)
        self._sample.start()
        metrics.register(self)

    def restart_on(self, kernel_id: str, choose) -> None:
        """Restart a kernel on newly chosen devices (``choose()`` sets them), after any restart of it
        still under way: choices made in a row apply in order, never two restarts of one kernel at once."""
        previous = self._restarts.get(kernel_id)
        km = self._server.kernel_manager

        async def run():
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            choose()
            try:
                await km.restart_kernel(kernel_id)
            except Exception as e:  # a wait that timed out, a kernel gone meanwhile: logged, never raised
                self.log.error("jupyter-tt: kernel %s did not restart on its new devices: %s", kernel_id, e)
            finally:
                if self._restarts.get(kernel_id) is task:
                    del self._restarts[kernel_id]

        task = asyncio.ensure_future(run())
        self._restarts[kernel_id] = task

    def with_path(self, item: dict) -> dict:
        """Adds ``notebook_path``: the item's notebook as a path of this server (None outside its root)."""
        notebook = item.get("notebook")
        path = None
        if notebook:
            root = os.path.abspath(self._server.root_dir)
            full = os.path.abspath(os.path.join(root, notebook))
            if os.path.commonpath([root, full]) == root:
                path = os.path.relpath(full, root).replace(os.sep, "/")
        return {**item, "notebook_path": path}

    def initialize_handlers(self) -> None:
        self.handlers.extend([
            (r"/jupyter-tt/api/devices", DevicesHandler),
            (r"/jupyter-tt/api/leases", LeasesHandler),
            (r"/jupyter-tt/api/leases/([\w-]+)", LeaseHandler),
            (r"/jupyter-tt/api/queue", QueueHandler),
            (r"/jupyter-tt/api/usage", UsageHandler),
            (r"/jupyter-tt/api/kernels/([\w-]+)/devices", KernelDevicesHandler),
            (r"/jupyter-tt/serve/(\d+)/(.*)", ServeProxyHandler),
        ])

    def _changed(self) -> None:
        # This process changed the state (a kernel got or gave back devices): report it now,
        # not at the next tick, so that short-lived leases are not missed. Called in worker threads.
        self._passes.soon()

    async def _start_passes(self) -> None:
        self._passes.start()
        await self._passes.run_once()  # at start: leases of processes that died while no server ran end now

    async def _look(self) -> None:
        """A pass (``ReconcileLoop``): look at the state, say what changed, reclaim idle kernels."""
        for event in await call(self.watcher.look):
            self._emit(event)
        await self._reclaim_idle()

    def idle_policy(self) -> tuple[float, float]:
        """(idle_timeout, idle_grace): the service's on a shared host, else this server's settings."""
        policy = getattr(self.scheduler, "idle_policy", None)
        return policy if policy else (self.tt_settings.idle_timeout, self.tt_settings.idle_grace)

    async def _reclaim_idle(self) -> None:
        """Warn, then shut down, this server's idle kernels whose devices a waiting request needs
        (see ``idle.py``). Works from the look that just ran: no scheduler call of its own."""
        timeout, grace = self.idle_policy()
        if timeout <= 0:
            return
        self._idle.timeout, self._idle.grace = timeout, grace
        km = self._server.kernel_manager
        found = {}
        for kid in km.list_kernel_ids():
            try:
                found[kid] = km.get_kernel(kid)
            except KeyError:  # shut down meanwhile
                continue
        pids = {kid: pid for kid, kernel in found.items()
                if isinstance(pid := getattr(getattr(kernel, "provisioner", None), "pid", None), int)}
        serving = await call(self._serving.sample, pids)  # reads /proc: in a worker thread
        kernels = {kid: idle_kernel(kid, kernel, serving.get(kid)) for kid, kernel in found.items()}
        report = self.watcher.report
        free = Counter(s.device.card_type for s in (report.devices if report else ()) if s.state == DeviceStatus.FREE)
        actions = self._idle.decide(list(self.watcher.leases.values()), kernels, list(self.watcher.queue.values()), free)
        for action in actions:
            lease, kernel_id = action.lease, action.lease.kernel_id
            if kernel_id is None:  # decide() only acts on kernels' leases
                continue
            if action.kind == "warn":
                self.log.warning("jupyter-tt: kernel %s (%s) is %s", kernel_id, lease.id, action.reason)
                self._emit({**StateWatcher.lease_event("idle-warning", lease, self.scheduler.inventory.simulated),
                            "reason": action.reason, "idle_seconds": round(action.idle_for), "grace_seconds": round(grace)})
                continue
            self.log.warning("jupyter-tt: shutting down kernel %s, %s", kernel_id, action.reason)
            provisioner = getattr(km.get_kernel(kernel_id), "provisioner", None)
            if provisioner is not None and hasattr(provisioner, "release_reason"):
                provisioner.release_reason = action.reason
            await km.shutdown_kernel(kernel_id)

    async def _sample_telemetry(self) -> None:
        now = round(time.time(), 1)
        try:
            report = await call(self.scheduler.report)
        except Exception:
            self.log.exception("jupyter-tt: reading telemetry failed")
            return
        self.watcher.report = report  # also what /metrics reports until the next change
        for state in report.devices:
            samples = self.telemetry_history.setdefault(state.id, deque(maxlen=self.tt_settings.telemetry_samples))
            samples.append([now, state.device.telemetry.temperature_c, state.device.telemetry.power_w])

    async def stop_extension(self) -> None:
        """Before the server shuts its kernels down (jupyter_server stops extensions first): the kernels
        waiting in the queue stop waiting, so that no card released by the shutdown goes to one of them,
        and the starts that failed are forgotten, so that the shutdown does not fail on them. A second
        call (a second SIGTERM while the first stop runs) waits for the first."""
        if getattr(self, "_passes", None) is None:  # initialize_settings failed: nothing started
            return
        if getattr(self, "_stop", None) is None:
            self._stop = asyncio.ensure_future(self._stop_once())
        await asyncio.shield(self._stop)

    async def _stop_once(self) -> None:
        self._passes.stop()
        self._sample.stop()
        if self._changed in self.scheduler.listeners:
            self.scheduler.listeners.remove(self._changed)
        ended = cancel_waits("the Jupyter server is stopping", closing=True)
        if ended:
            self.log.info("jupyter-tt: %d kernel(s) stopped waiting for devices: the server stops", len(ended))
        await self._settle_starts()

    async def _settle_starts(self) -> None:
        """Wait (bounded) for kernels still starting, then drop the starts that failed from the kernel manager.

        jupyter_client 8.10 keeps a kernel in ``_pending_kernels`` while it starts and also after its start
        failed (``MultiKernelManager._add_kernel_when_ready`` logs the error and leaves it there), and
        jupyter_server 2.21's ``shutdown_all`` then asks ``shutdown_kernel`` for it, which raises HTTP 404 for a
        kernel it does not list: the stop dies there, the server keeps running without answering, and its
        kernels are not shut down. A kernel that waits in our queue is pending the whole time."""
        km = self._server.kernel_manager
        pending = getattr(km, "_pending_kernels", None)
        if not isinstance(pending, dict):
            return
        starting = [task for kid, task in pending.items() if kid not in km and not task.done()]
        if starting:
            _, late = await asyncio.wait(starting, timeout=STOP_STARTS_WAIT)
            if late:
                self.log.warning("jupyter-tt: %d kernel(s) still starting after %g s as the server stops", len(late),
                                 STOP_STARTS_WAIT)
        for kid in [kid for kid, task in pending.items() if kid not in km and task.done()]:
            del pending[kid]
