"""REST API under ``/jupyter-tt/api`` (docs/reference/rest-api.md). Jupyter-authenticated; 403 otherwise.

Every scheduler call runs off the event loop (``call``: a worker thread with a deadline).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, cast

import httpx
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError

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
        report = await call(self.scheduler.report)
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
        self.finish(json.dumps({"since": since, "user": self.scheduler.user, "usage": usage}))


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


#: Streams the proxy may hold open to model servers at once: more than any one accepts (its batch plus
#: its queue), so the proxy never becomes the limit.
MAX_UPSTREAM_CONNECTIONS = 1024
_upstream: httpx.AsyncClient | None = None


def _client() -> httpx.AsyncClient:
    """One pooled client for every proxied request of this Jupyter server (it runs one event loop)."""
    global _upstream
    if _upstream is None:
        _upstream = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=MAX_UPSTREAM_CONNECTIONS, max_keepalive_connections=32),
            timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=60.0),  # streams last; a disconnect ends them
            follow_redirects=False, trust_env=False,
        )
    return _upstream


class ServeProxyHandler(TTHandler):
    """``/jupyter-tt/serve/<port>/<path>``: a model served by one of this user's kernels, through Jupyter.

    Only ports that a kernel registered with ``jupyter_tt.serve()`` (0600 in this user's runtime dir) are
    proxied, and only while the registered process (pid, start ticks, boot) is the one that runs: never
    an arbitrary local port, nor a process that took over a PID. The proxy adds the model server's key;
    it forwards neither Jupyter's credentials (the ``token`` parameter, cookies, Authorization) nor
    redirects. Streams (SSE) pass through as they come, and a browser that goes away ends the upstream
    request (the model server then cancels it).
    """

    _task: asyncio.Task | None = None

    @web.authenticated
    @authorized
    async def get(self, port: str, path: str):
        await self._forward(int(port), path)

    @web.authenticated
    @authorized
    async def post(self, port: str, path: str):
        await self._forward(int(port), path)

    def on_connection_close(self):
        if self._task is not None:
            self._task.cancel()

    async def _forward(self, port: int, path: str) -> None:
        from ..scheduler.processes import ProcessRef
        from ..serving.notebook import read_registration

        entry = read_registration(port, self.serverapp.runtime_dir) or {}
        try:
            live = ProcessRef(int(entry["pid"]), int(entry["started"]), str(entry["boot_id"])).alive()
        except (KeyError, TypeError, ValueError):
            live = False
        if not live:
            raise web.HTTPError(404, f"no model is served from a kernel on port {port}: start one with jupyter_tt.serve()")
        query: list[tuple[str, str | int | float | bool | None]] = [(k, v.decode(errors="replace")) for k, values in self.request.query_arguments.items() if k != "token"
                 for v in values]
        headers = {"Content-Type": self.request.headers.get("Content-Type", "application/json"),
                   "Accept": self.request.headers.get("Accept", "*/*")}
        if entry.get("api_key"):
            headers["Authorization"] = f"Bearer {entry['api_key']}"
        request = _client().build_request(self.request.method or "GET", f"http://127.0.0.1:{port}/{path}", params=query,
                                          headers=headers, content=self.request.body if self.request.method == "POST" else None)
        self._task = asyncio.ensure_future(self._relay(request))
        try:
            await self._task
        except asyncio.CancelledError:
            stream = getattr(self.request.connection, "stream", None)
            if stream is None or not stream.closed():
                raise
        except httpx.HTTPError as e:
            if self._headers_written:
                return
            raise web.HTTPError(502, f"the model server on port {port} did not answer ({type(e).__name__})") from None

    async def _relay(self, request: httpx.Request) -> None:
        response = await _client().send(request, stream=True)
        try:
            self.set_status(response.status_code)
            if "content-type" in response.headers:
                self.set_header("Content-Type", response.headers["content-type"])
            async for chunk in response.aiter_raw():
                self.write(chunk)
                await self.flush()
            self.finish()
        except StreamClosedError:  # the browser went away: closing the response ends the upstream request
            pass
        finally:
            await response.aclose()


def handlers() -> list[tuple[str, type]]:
    return [
        (r"/jupyter-tt/api/devices", DevicesHandler),
        (r"/jupyter-tt/api/leases", LeasesHandler),
        (r"/jupyter-tt/api/leases/([\w-]+)", LeaseHandler),
        (r"/jupyter-tt/api/queue", QueueHandler),
        (r"/jupyter-tt/api/usage", UsageHandler),
        (r"/jupyter-tt/api/kernels/([\w-]+)/devices", KernelDevicesHandler),
        (r"/jupyter-tt/serve/(\d+)/(.*)", ServeProxyHandler),
    ]
