"""The model server's HTTP listener, made to hold when another local user sends it slow or half requests.

The anchors are uvicorn's ``--timeout-keep-alive`` and ``--limit-concurrency`` and nginx's
``client_header_timeout`` and ``limit_conn``. Tornado's HTTPServer gives the timeouts and the header
size limit; this subclass adds:

- a cap on connections still sending their first request's headers: past it, the oldest of them is
  closed. A client that sends its request at once (the owner's) is never the oldest, so a thousand
  half-sent requests from someone else cannot keep it out, nor run the server out of descriptors;
- a cap on all connections: past it, a new one is closed at once;
- an accept loop that survives EMFILE: it pauses accepting for a moment and logs once per interval,
  instead of an exception (and a log line) for every readiness of the listening socket.

The API key is checked as soon as a request's headers are in, before its body is read (every handler
of ``openai.py`` streams its body).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("jupyter_tt.serving")

#: Seconds a connection may take to send a request's headers, or sit idle between requests.
HEADER_TIMEOUT = 10.0
#: Seconds a request may take to send its body.
BODY_TIMEOUT = 60.0
#: The largest request head accepted (tornado's default is 64 KiB).
MAX_HEADER_BYTES = 16 << 10
#: Connections that have not yet sent their first request's headers (past it, the oldest is closed).
MAX_PENDING = 128
#: Connections in all (past it, a new one is closed at once).
MAX_CONNECTIONS = 512
#: Seconds accepting pauses after the process ran out of descriptors, and between two log lines saying so.
EMFILE_PAUSE = 0.1
EMFILE_LOG_INTERVAL = 10.0


class GuardedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with the limits of the module's docstring."""

    def initialize(self, *args, **kwargs) -> None:  # tornado's Configurable constructor
        kwargs.setdefault("idle_connection_timeout", HEADER_TIMEOUT)  # also the header timeout
        kwargs.setdefault("body_timeout", BODY_TIMEOUT)
        kwargs.setdefault("max_header_size", MAX_HEADER_BYTES)
        super().initialize(*args, **kwargs)
        self._pending: OrderedDict[IOStream, float] = OrderedDict()
        self._open: set[IOStream] = set()
        self._emfile = {"count": 0, "logged": float("-inf")}
        self.evicted = 0

    # ------------------------------------------------------------------ connections

    def handle_stream(self, stream: IOStream, address) -> None:
        for old in [s for s in self._open if s.closed()]:
            self._open.discard(old)
            self._pending.pop(old, None)
        if len(self._open) >= MAX_CONNECTIONS:
            stream.close()
            return
        if len(self._pending) >= MAX_PENDING:
            oldest, _ = self._pending.popitem(last=False)
            self._open.discard(oldest)
            oldest.close()
            self.evicted += 1
        self._pending[stream] = time.monotonic()
        self._open.add(stream)
        super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        stream = getattr(request_conn, "stream", None)
        return _HeadersIn(delegate, lambda: self._pending.pop(stream, None) if stream is not None else None)

    # ------------------------------------------------------------------ accepting

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket):
        loop = IOLoop.current()
        state = {"removed": False, "paused": False}

        def resume() -> None:
            if not state["removed"]:
                state["paused"] = False
                loop.add_handler(sock, accept, IOLoop.READ)

        def accept(fd, events) -> None:
            for _ in range(128):
                if state["removed"] or state["paused"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        raise
                    self._out_of_descriptors(e)
                    state["paused"] = True
                    loop.remove_handler(sock)
                    loop.call_later(EMFILE_PAUSE, resume)
                    return
                self._handle_connection(connection, address)

        def remove() -> None:
            state["removed"] = True
            if not state["paused"]:
                loop.remove_handler(sock)

        loop.add_handler(sock, accept, IOLoop.READ)
        return remove

    def _out_of_descriptors(self, error: OSError) -> None:
        self._emfile["count"] += 1
        now = time.monotonic()
        if now - self._emfile["logged"] >= EMFILE_LOG_INTERVAL:
            log.warning("jupyter-tt serve: cannot accept connections (%s), %d times since the last report; %d open",
                        error.strerror, self._emfile["count"], len(self._open))
            self._emfile.update(count=0, logged=now)


class _HeadersIn(httputil.HTTPMessageDelegate):
    """Passes everything on to ``inner``; tells ``on_headers`` once the request's headers are in."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, on_headers):
        self.inner, self.on_headers = inner, on_headers

    def headers_received(self, start_line, headers):
        self.on_headers()
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


def raise_descriptor_limit() -> None:
    """Let this process open as many descriptors as the host allows it (the soft limit up to the hard one)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
