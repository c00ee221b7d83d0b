"""The scheduler service, as this process's ``SchedulerAPI``: the same calls as personal mode, over a socket.

Each call is one request line and one answer line on a connection this process keeps (reopened when
the service restarts). A call that gets no answer within ``timeout`` seconds raises
SchedulerUnavailable with what to check; nothing waits forever.
"""

from __future__ import annotations

import errno
import itertools
import json
import socket
import threading
import time
from typing import Any, BinaryIO

from ..devices import Device
from ..errors import SchedulerUnavailable, TTError
from . import protocol
from .api import SchedulerAPI
from .leases import Lease, Page, PendingReset, Report, UsageTotal, Waiting
from .placement import ANY


class RemoteInventory:
    """What the service says about its inventory (its kind, key, whether it is simulated)."""

    def __init__(self, description: dict):
        self.description = description
        self.kind = description.get("kind", "")
        self.key = description.get("key", "")
        self.simulated = bool(description.get("simulated"))

    def describe(self) -> dict:
        return dict(self.description)


class ServiceClient(SchedulerAPI):
    mode = "service"

    def __init__(self, socket_path: str, *, timeout: float = 10.0):
        self.socket_path = socket_path
        self.state_dir = socket_path
        self.timeout = timeout
        self.listeners = []
        self._lock = threading.Lock()
        self._conn: tuple[socket.socket, BinaryIO] | None = None  # the socket, and its answers as a file
        self._ids = itertools.count(1)
        hello = self._call("hello")
        self.user = hello["user"]
        self.enforcing = hello.get("enforcing", False)
        self.inventory = RemoteInventory(hello["inventory"])
        #: The host's idle policy (TTSettings.idle_timeout, idle_grace in the service's config).
        self.idle_policy = (float(hello.get("idle", {}).get("timeout", 0.0)), float(hello.get("idle", {}).get("grace", 60.0)))

    # ------------------------------------------------------------------ the wire

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        """Connect, waiting up to ``timeout`` seconds for a service that is restarting (its socket missing,
        or nobody listening yet); never falls back to anything else."""
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                break
            except OSError as e:
                sock.close()
                if time.monotonic() >= deadline or e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise SchedulerUnavailable(
                        f"cannot reach the scheduler service at {self.socket_path} ({e.strerror or e}) within "
                        f"{self.timeout:g} s: start it (systemctl start jupyter-tt-scheduler), or, on a host without "
                        f"the service, set JUPYTER_TT_SCHEDULER=personal to keep leases for yourself"
                    ) from None
                time.sleep(0.2)
        self._conn = (sock, sock.makefile("rb"))
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn[0].close()
        self._conn = None

    def _call(self, op: str, **args: Any) -> Any:
        """One call. Refused for being over the user's budget (429), it asks again, within ``timeout`` in
        all (the service holds each refusal for up to a second, which paces the asking); past that the
        refusal is raised."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._call_once(op, **args)
            except TTError as e:
                if e.status_code != 429 or time.monotonic() + 1.0 > deadline:
                    raise

    def _call_once(self, op: str, **args: Any) -> Any:
        request_id = next(self._ids)
        message = protocol.line({"id": request_id, "op": op, "args": protocol.encode(args)})
        with self._lock:
            for attempt in (1, 2):  # once more on a fresh connection: the service may have restarted
                sock, answers = self._conn or self._connect()
                try:
                    sock.sendall(message)
                    raw = answers.readline(protocol.MAX_ANSWER + 1)
                except socket.timeout:
                    self._close()  # its answer may still come: a new connection, so it is never taken for the next one's
                    raise SchedulerUnavailable(
                        f"the scheduler service at {self.socket_path} did not answer {op} within {self.timeout:g} s: "
                        f"check it (systemctl status jupyter-tt-scheduler)"
                    ) from None
                except OSError:
                    raw = b""
                if raw:
                    break
                self._close()
                if attempt == 2:
                    raise SchedulerUnavailable(f"the scheduler service at {self.socket_path} closed the connection during {op}")
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError(f"an answer longer than {protocol.MAX_ANSWER} bytes")
                answer = json.loads(raw)
                if answer.get("id") not in (request_id, None):
                    raise ValueError(f"the answer to request {answer.get('id')!r}, not to {request_id}")
            except ValueError as e:
                self._close()  # out of step with the service: start afresh, never pair the wrong answers
                raise SchedulerUnavailable(f"the scheduler service's answer to {op} was unreadable ({e}): "
                                           f"try again; the next call uses a new connection") from None
        if "error" in answer:
            protocol.raise_error(answer["error"])
        return protocol.decode(answer.get("result"))

    # ------------------------------------------------------------------ SchedulerAPI

    def devices(self, fresh: bool = False) -> list[Device]:
        return [Device.from_json(d) for d in self._call("devices", fresh=fresh)]

    def submit(self, count: int, card_type: str = ANY, *, kernel_id: str | None = None,
               notebook: str | None = None, replaces: str | None = None) -> Lease | Waiting:
        more = {"replaces": replaces} if replaces else {}  # only when given: a service of a release before it
        return self._call("submit", count=count, card_type=card_type, kernel_id=kernel_id, notebook=notebook, **more)

    def check(self, request_id: str) -> Lease | Waiting:
        return self._call("check", request_id=request_id)

    def cancel(self, request_id: str) -> Lease | None:
        return self._call("cancel", request_id=request_id)

    def release(self, lease_id: str, *, reason: str = "released", user: str | None = None,
                crash: str | None = None) -> bool:
        # The service lets each user end only their own leases, whatever ``user`` says.
        return self._call("release", lease_id=lease_id, reason=reason, crash=crash)

    def attach_kernel(self, lease_id: str, pid: int) -> None:
        self._call("attach_kernel", lease_id=lease_id, pid=pid)

    def detach_kernel(self, lease_id: str, *, crash: str | None = None) -> bool:
        return self._call("detach_kernel", lease_id=lease_id, crash=crash)

    def lease_resets(self, lease_id: str) -> list[PendingReset]:
        return self._call("lease_resets", lease_id=lease_id)

    def get_lease(self, lease_id: str) -> Lease | None:
        return self._call("get_lease", lease_id=lease_id)

    def ended_lease(self, lease_id: str) -> tuple[Lease, str] | None:
        ended = self._call("ended_lease", lease_id=lease_id)
        return tuple(ended) if ended else None

    def reconcile(self) -> list[str]:
        return self._call("reconcile")

    def leases(self) -> list[Lease]:
        return self._call("leases")

    def queue(self) -> list[Waiting]:
        return self._call("queue")

    def history_page(self, limit: int = 100, *, before: str | None = None) -> Page:
        return self._call("history", limit=limit, before=before)

    def usage(self, since: float = 0.0) -> list[UsageTotal]:
        return self._call("usage", since=since)

    def usage_records_page(self, since: float = 0.0, *, after: str | None = None, limit: int = 1000) -> Page:
        return self._call("usage_records", since=since, after=after, limit=limit)

    def retry_reset(self, device_id: int) -> bool:
        return self._call("retry_reset", device_id=device_id)

    def report(self) -> Report:
        return self._call("report")

    def timeout_message(self, waiting: Waiting, timeout: float | None) -> str:
        return self._call("timeout_message", waiting=waiting, timeout=timeout)
