"""The ``jupyter_tt`` server extension (enabled on install)."""

from __future__ import annotations

import os

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop, PeriodicCallback

from .._version import __version__
from ..config import TTSettings
from ..scheduler import open_scheduler
from . import metrics
from .events import SCHEMA_ID, SCHEMA_PATH, StateWatcher
from .handlers import handlers


class JupyterTTApp(ExtensionApp):
    """Serves the device API, emits lease events and reclaims dead leases every ``watch_interval``."""

    name = "jupyter_tt"
    description = "Tenstorrent devices for Jupyter kernels"
    version = __version__

    def initialize_settings(self) -> None:
        self.tt_settings = TTSettings(parent=self.serverapp)
        self.scheduler = open_scheduler(self.tt_settings)
        # Kernels without a lease must see no device: tt-provisioner sets the variable for kernels
        # that hold one, every other kernel inherits this empty value from the server.
        os.environ["TT_VISIBLE_DEVICES"] = ""
        inventory = self.scheduler.inventory.describe()
        self.log.info(
            "jupyter-tt %s: %s inventory%s with %d devices, state in %s, user %s",
            __version__,
            inventory["kind"],
            f" ({inventory['spec']}, SIMULATED)" if inventory["simulated"] else "",
            len(self.scheduler.devices()),
            self.scheduler.state_dir,
            self.scheduler.user,
        )
        event_logger = self.serverapp.event_logger
        if SCHEMA_ID not in event_logger.schemas.schema_ids:
            event_logger.register_event_schema(SCHEMA_PATH)
        self.watcher = StateWatcher(self.scheduler, lambda data: event_logger.emit(schema_id=SCHEMA_ID, data=data))
        self.watcher.poll()  # reconcile at start: leases of processes that died while no server ran end now
        self._watch = PeriodicCallback(self._poll, self.tt_settings.watch_interval * 1000)
        self._watch.start()
        self._poll_soon = False
        self.scheduler.listeners.append(self._changed)
        metrics.register(self)

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    def _changed(self) -> None:
        # This process changed the state (a kernel got or gave back devices): report it now,
        # not at the next tick, so that short-lived leases are not missed.
        if not self._poll_soon:
            self._poll_soon = True
            IOLoop.current().add_callback(self._poll)

    def _poll(self) -> None:
        self._poll_soon = False
        try:
            self.watcher.poll()
        except Exception:  # a bad pass must not stop the next ones
            self.log.exception("jupyter-tt: reconcile pass failed")

    async def stop_extension(self) -> None:
        if getattr(self, "_watch", None) is None:  # initialize_settings failed: nothing started
            return
        self._watch.stop()
        self.scheduler.listeners.remove(self._changed)

