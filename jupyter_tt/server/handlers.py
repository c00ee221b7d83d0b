"""REST API under ``/jupyter-tt/api`` (CONTRACT.md). Jupyter-authenticated; 403 otherwise.

Every scheduler call runs off the event loop (``call``: a worker thread with a deadline).
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import TTError
from ..scheduler import call


class TTHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = "jupyter_tt"

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
        self.finish(json.dumps({"since": since, "usage": await call(self.scheduler.usage, since)}))


class ServeProxyHandler(TTHandler):
    """``/jupyter-tt/serve/<port>/<path>``: a model served by one of this user's kernels, through Jupyter.

    Only ports that a kernel registered with ``jupyter_tt.serve()`` (in this user's runtime dir, by a
    live process) are proxied: never an arbitrary local port. Streams (SSE) pass through as they come.
    """

    @web.authenticated
    @authorized
    async def get(self, port: str, path: str):
        await self._forward(int(port), path)

    @web.authenticated
    @authorized
    async def post(self, port: str, path: str):
        await self._forward(int(port), path)

    async def _forward(self, port: int, path: str) -> None:
        import psutil
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        from ..serving.notebook import registry_path

        try:
            with open(registry_path(port, self.serverapp.runtime_dir)) as f:
                entry = json.load(f)
            alive = psutil.pid_exists(entry["pid"])
        except (OSError, ValueError, KeyError):
            alive = False
        if not alive:
            raise web.HTTPError(404, f"no model is served from a kernel on port {port}: start one with jupyter_tt.serve()")

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                self.set_status(int(line.split()[1]))
            elif line.lower().startswith("content-type:"):
                self.set_header("Content-Type", line.split(":", 1)[1].strip())

        def on_chunk(chunk: bytes) -> None:
            self.write(chunk)
            self.flush()

        query = f"?{self.request.query}" if self.request.query else ""
        request = HTTPRequest(
            f"http://127.0.0.1:{port}/{path}{query}",
            method=self.request.method,
            body=self.request.body if self.request.method == "POST" else None,
            headers={"Content-Type": self.request.headers.get("Content-Type", "application/json")},
            header_callback=on_header,
            streaming_callback=on_chunk,
            request_timeout=3600,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            raise web.HTTPError(502, f"the model server on port {port} did not answer ({response.error})")
        self.finish()


def handlers() -> list[tuple[str, type]]:
    return [
        (r"/jupyter-tt/api/devices", DevicesHandler),
        (r"/jupyter-tt/api/leases", LeasesHandler),
        (r"/jupyter-tt/api/leases/([\w-]+)", LeaseHandler),
        (r"/jupyter-tt/api/queue", QueueHandler),
        (r"/jupyter-tt/api/usage", UsageHandler),
        (r"/jupyter-tt/serve/(\d+)/(.*)", ServeProxyHandler),
    ]
