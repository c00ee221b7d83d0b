"""REST API under ``/jupyter-tt/api`` (docs/reference/rest-api.md). Jupyter-authenticated; 403 otherwise.
The proxy to the model servers of this user's kernels is ``proxy.py``.

Every scheduler call runs off the event loop (``call``: a worker thread with a deadline).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import TTError
from ..kernels.provisioner import TTProvisioner
from ..scheduler import DeviceRequest, call, most_at_once

if TYPE_CHECKING:
    from .app import JupyterTTApp


class TTHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = "jupyter_tt"

    @property
    def extensionapp(self) -> JupyterTTApp:
        return cast("JupyterTTApp", super().extensionapp)

    @property
    def scheduler(self):
        return self.extensionapp.scheduler

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, TTError):  # our message, without tornado's "HTTP 409: ..." wrapping
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": exc.message}))
        else:
            super().write_error(status_code, **kwargs)


class DevicesHandler(TTHandler):
    @web.authenticated
    @authorized
    async def get(self):
        report = (await call(self.scheduler.report)).to_json()
        history = self.extensionapp.telemetry_history
        report["devices"] = [self.extensionapp.with_path(device) for device in report["devices"]]
        for device in report["devices"]:
            # [time, temperature_c, power_w] samples, oldest first (every telemetry_interval seconds)
            device["telemetry_history"] = list(history.get(device["id"], ()))
        self.finish(json.dumps(report))


class LeasesHandler(TTHandler):
    @web.authenticated
    @authorized
    async def get(self):
        leases = [self.extensionapp.with_path(lease.to_json()) for lease in await call(self.scheduler.leases)]
        self.finish(json.dumps({"leases": leases}))


class LeaseHandler(TTHandler):
    @web.authenticated
    @authorized
    async def get(self, lease_id: str):
        lease = await call(self.scheduler.get_lease, lease_id)
        if lease is None:
            raise web.HTTPError(404, f"no active lease {lease_id}")
        self.finish(json.dumps(self.extensionapp.with_path(lease.to_json())))

    @web.authenticated
    @authorized
    async def delete(self, lease_id: str):
        """End a lease of this server's user (e.g. one left by a kernel that no server manages)."""
        user = self.scheduler.user
        await call(self.scheduler.release, lease_id, reason=f"released through the API by {user}", user=user)
        self.set_status(204)
        self.finish()


class QueueHandler(TTHandler):
    @web.authenticated
    @authorized
    async def get(self):
        requests = [self.extensionapp.with_path(w.to_json()) for w in await call(self.scheduler.queue)]
        self.finish(json.dumps({"requests": requests}))


class UsageHandler(TTHandler):
    @web.authenticated
    @authorized
    async def get(self):
        try:
            since = float(self.get_query_argument("since", "0"))
        except ValueError:
            raise web.HTTPError(400, "since must be a time in seconds since the epoch, e.g. ?since=1767225600") from None
        usage = await call(self.scheduler.usage, since)
        # ``user``: whom this server's leases are accounted to (the panel shows their share).
        self.finish(json.dumps({"since": since, "user": self.scheduler.user, "usage": [u.to_json() for u in usage]}))


class KernelDevicesHandler(TTHandler):
    """``POST /jupyter-tt/api/kernels/<id>/devices {"devices": N, "card_type": T}``: the kernel restarts
    on a lease of those devices (waiting in the queue if it must). Answers 202 at once; the restart,
    the queue and the new lease then show in the events, the panel and the status bar."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str):
        km = self.serverapp.kernel_manager
        if kernel_id not in km:
            raise web.HTTPError(404, f"no kernel {kernel_id} on this server")
        provisioner = getattr(km.get_kernel(kernel_id), "provisioner", None)
        if not isinstance(provisioner, TTProvisioner):
            raise TTError("this kernel does not get its devices from jupyter-tt: start the notebook on the "
                          "'Tenstorrent' kernel (jupyter tt kernelspec install --generic) or another tt- kernelspec")
        try:
            body = json.loads(self.request.body or b"{}")
            devices, card_type = body["devices"], body.get("card_type", "any")
            if type(devices) is not int or not isinstance(card_type, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):  # not the shape of a request at all
            raise TTError('send {"devices": N, "card_type": "n150" | "n300" | "any"}') from None
        request = DeviceRequest.parse(devices, card_type, error=TTError)
        devices, card_type = request.devices, request.card_type
        most = most_at_once(card_type, await call(self.scheduler.devices))  # the scheduler's own rule
        if devices > most:
            what = "devices of one card type" if card_type == "any" else f"{card_type}{'s' * (most != 1)}"
            raise TTError(f"this host has {most} {what}: ask for at most {most}")
        self.extensionapp.restart_on(kernel_id, lambda: provisioner.choose(devices, card_type))
        self.set_status(202)
        self.finish(json.dumps({"kernel_id": kernel_id, "devices": devices, "card_type": card_type, "status": "restarting"}))
