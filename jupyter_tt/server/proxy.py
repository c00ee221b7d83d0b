"""``/jupyter-tt/serve/<port>/<path>``: the model servers of this user's kernels, reached through Jupyter
(its authentication, its URL), with the model server's own key added on the way."""

from __future__ import annotations

import asyncio

import httpx
from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..scheduler.processes import ProcessRef
from ..serving.notebook import read_registration
from .handlers import TTHandler

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
        # a file in this user's runtime folder: read off the event loop, as every file here
        entry = await asyncio.get_running_loop().run_in_executor(None, read_registration, port, self.serverapp.runtime_dir) or {}
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
