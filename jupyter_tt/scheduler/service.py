"""``jupyter tt scheduler``: the host-wide scheduler as a service, the only process that opens the state.

It runs as root or a dedicated user (the shipped systemd unit, ``jupyter-tt-scheduler.service``),
keeps the state in its own folder (0700, files 0600) and serves a Unix socket that every user may
connect to (``/run/jupyter-tt/scheduler.sock``). Who calls is taken from the socket's peer
credentials (``SO_PEERCRED``: uid and pid), never from what the caller says; quotas come from the
service's own configuration only. So a user can ask, release and see only as themselves.

Calls run in two fair lanes (``fairness.py``) that take their users' calls round robin: lease
operations in one thread, and reports in two threads with their own read connections, so that one user's reads can
neither starve another's nor hold a lease operation. A user with too many calls in progress, or who
takes leases faster than ``lease_rate``, is refused at once (429, "retry in N s"). The event loop only
moves bytes, so a slow or hostile client holds nothing but its own connection. A malformed request
gets an error and the connection goes on. Each lease's processes are followed with pidfds: when one exits, a pass
runs at once (and every ``watch_interval`` seconds anyway, for restart windows).

After every change (and every pass) the device nodes are fenced to match the leases (``enforce.py``):
a node is openable by its lessee only, a free one by nobody. Where the service may not change owners,
it says so at start and in ``hello`` / ``report``, and coordinates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil

from ..config import TTSettings
from ..devices import open_inventory
from ..errors import ConfigError, LeaseError, RequestError, TTError
from . import protocol
from .enforce import NodeGuard, can_change_owners
from .fairness import Busy, FairLane, TokenBucket
from .leases import Caller, SchedulerInfo, Waiting
from .loop import ReconcileLoop
from .processes import ProcessRef, uid_of
from .reset import available as why_no_reset
from .scheduler import Scheduler, clean_reason

log = logging.getLogger("jupyter_tt.service")

#: Connections one user may hold open at once (each Jupyter server, kernel and CLI call holds one).
MAX_CONNECTIONS_PER_USER = 64
#: Requests one user may have waiting in the queue at once.
MAX_WAITING_PER_USER = 16
#: Calls one user may have in progress at once in each lane (beyond: 429 at once).
LEASE_CALLS_PER_USER = 16
REPORT_CALLS_PER_USER = 4
#: Bytes of answer one report token pays for (a page of 1,000 history entries costs some ten).
REPORT_BYTES_PER_TOKEN = 32 << 10
#: Threads serving reports, each user's one at a time: another user's report never waits for a long one.
REPORT_WORKERS = 2
#: Most seconds a refusal for being over budget (429) waits on its own connection (as long as its
#: "retry in N s" says, up to this): a client looping on refusals costs the event loop about one answer
#: a second per connection, not thousands.
MAX_REFUSAL_DELAY = 1.0
#: Whose turn the service's own passes take in the lease lane.
SERVICE = "service"
#: Operations that read only: served from the reports lane and its own SQLite connection.
REPORTS = frozenset({"devices", "ended_lease", "leases", "queue", "history", "usage", "usage_records", "report"})


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


class SchedulerService:
    """Serves one scheduler on a Unix socket (see the module's docstring)."""

    def __init__(self, settings: TTSettings, socket_path: str, state_dir: str):
        self.settings = settings
        self.socket_path = Path(socket_path)
        inventory = open_inventory(settings.inventory, settings.sysfs_root, settings.visible_devices,
                                   settings.container_runtimes)
        resets, self.resets_off = settings.reset_after_crash, None
        if resets is None:  # the default: on where a tool can reset a card; a missing tool must not brick them
            missing = why_no_reset(settings.reset_tool) if inventory.kind == "sysfs" else "no real cards"
            resets = missing is None
            self.resets_off = missing and f"reset after a crash is off: {missing}"
        self.scheduler = Scheduler(inventory, state_dir, user=user_name(os.getuid()), restart_grace=settings.restart_grace,
                                   server=f"{socket.gethostname()}:service", mode="service", max_waiting=MAX_WAITING_PER_USER,
                                   reset_after_crash=resets, reset_tool=settings.reset_tool,
                                   history_days=settings.history_days, history_rows=settings.history_rows)
        #: Passes every watch_interval and after changes; resets (seconds each) in their own thread.
        self._passes = ReconcileLoop(self._reconcile, interval=settings.watch_interval, name="jupyter-tt scheduler",
                                     run_resets=self.scheduler.run_resets if self.scheduler.reset_after_crash else None)
        self.guard = NodeGuard(state_dir, reason_not=(
            can_change_owners() if inventory.kind == "sysfs" else f"the {inventory.kind} inventory has no device nodes to fence"))
        self._readers = threading.local()  # a reader (its own SQLite connection) per reports thread
        self._lanes = {"leases": FairLane("service", LEASE_CALLS_PER_USER),
                       "reports": FairLane("reports", REPORT_CALLS_PER_USER, workers=REPORT_WORKERS)}
        self._lease_requests = TokenBucket(settings.lease_burst, settings.lease_rate, what="lease requests")
        self._report_requests = TokenBucket(settings.report_burst, settings.report_rate, what="report requests")
        self._connections: dict[int, int] = {}
        self._pidfds: dict[int, int] = {}
        self._exited: set[int] = set()  # followed processes seen to exit (their leases end in the next passes)
        self._server: asyncio.AbstractServer | None = None
        self._stopped = asyncio.Event()

    @property
    def reader(self) -> Scheduler:
        """This reports thread's own read-only handle on the state (``Scheduler.reader``)."""
        reader = getattr(self._readers, "scheduler", None)
        if reader is None:
            reader = self._readers.scheduler = self.scheduler.reader()
            # Reports show the cards as the passes last read them (every watch_interval, when older than
            # inventory_ttl): a report never reads sysfs while another user's report runs beside it.
            reader.report_age = self.settings.watch_interval + 2 * Scheduler.inventory_ttl
        return reader

    # ------------------------------------------------------------------ running

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT (or ``stop()``); removes the socket on the way out."""
        loop = asyncio.get_running_loop()
        self._claim_socket_path()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        # Before anyone can connect: end the leases of processes that died while no service ran, and
        # fence every node as the leases say (a client that sees the socket sees fenced nodes).
        ended = await self._call(self._pass)
        await self._follow_processes()
        self._server = await asyncio.start_unix_server(self._connection, path=str(self.socket_path), limit=protocol.MAX_LINE)
        os.chmod(self.socket_path, 0o666)  # anyone may connect: who they are comes from the kernel
        inventory = self.scheduler.inventory.describe()
        log.info("jupyter-tt scheduler: serving %s (%s inventory%s, %d devices), state in %s; ended at start: %s; %s; %s",
                 self.socket_path, inventory["kind"], " SIMULATED" if inventory["simulated"] else "",
                 len(self.scheduler.devices()), self.scheduler.state_dir, ", ".join(ended) or "none",
                 self.guard.describe()["enforcement"],
                 "cards are reset after a crash" if self.scheduler.reset_after_crash else (self.resets_off or "reset after a crash is off"))
        self._passes.start()
        try:
            await self._stopped.wait()
        finally:
            self._passes.stop()  # no pass from here on: one would fence the nodes again after they are closed
            self._server.close()
            await asyncio.sleep(0)  # let a pass that was already scheduled see the stop
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            for fd in self._pidfds.values():
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_reader(fd)
                    os.close(fd)
            if self.guard.enforcing:  # fail closed: nobody opens a card while no service keeps the leases
                closed = await self._call(self._close_nodes)
                log.info("jupyter-tt scheduler: stopped; every device node is root's (0600)%s until the service starts "
                         "again (jupyter tt scheduler --unfence gives them back for good)",
                         f", {len(closed)} changed" if closed else "")
            for lane in self._lanes.values():
                lane.shutdown()

    def stop(self) -> None:
        self._stopped.set()

    def _claim_socket_path(self) -> None:
        """Create the socket's folder (0755), and take over a socket left by a service that died."""
        self.socket_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # nobody listens: a service killed with SIGKILL left it
            else:
                raise ConfigError(f"another scheduler service already serves {self.socket_path}: stop it first")
            finally:
                probe.close()

    async def _reconcile(self) -> None:
        """One pass (``ReconcileLoop``): end what dead processes held, grant and fence; then follow the holders."""
        if self._stopped.is_set():
            return
        await self._call(self._pass)
        await self._follow_processes()

    def _pass(self) -> list[str]:
        """A pass, and the nodes fenced as its leases say, in one turn of the lease lane: as with every
        operation that changes the leases, no other call is answered in between."""
        ended = self.scheduler.reconcile()
        if self.guard.enforcing:
            self._fence()
        return ended

    def _nodes(self) -> dict[int, Path]:
        inventory = self.scheduler.inventory
        return {d.id: inventory.node(d.id) for d in self.scheduler.devices()}

    def _close_nodes(self) -> list[str]:
        return self.guard.close(self._nodes())

    def _fence(self) -> None:
        # A card out for a reset is root's until it is back, though its lease lasts (its kernel restarts on it):
        # none of the lessee's other processes can open it under the reset.
        resetting = set(self.scheduler.resets())
        owners = {d.id: lease.user for lease in self.scheduler.leases() for d in lease.devices if d.id not in resetting}
        for change in self.guard.apply(self._nodes(), owners):
            log.info("jupyter-tt scheduler: fenced %s", change)

    async def _follow_processes(self) -> None:
        """Hold a pidfd for every process a lease or request follows: its exit wakes a pass at once."""
        loop = asyncio.get_running_loop()
        wanted = await self._call(self.scheduler.followed_pids)
        for pid in set(self._pidfds) - wanted:
            self._unfollow(pid)
        self._exited &= wanted
        for pid in wanted - set(self._pidfds) - self._exited:
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # already gone: the next pass ends what it held
                self._passes.soon()
                continue
            self._pidfds[pid] = fd
            loop.add_reader(fd, self._on_exit, pid)

    def _on_exit(self, pid: int) -> None:
        # A pidfd stays readable once its process has exited: stop watching it, and pass now.
        self._unfollow(pid)
        self._exited.add(pid)
        self._passes.soon()

    def _unfollow(self, pid: int) -> None:
        fd = self._pidfds.pop(pid)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)

    async def _call(self, fn, *args, **kwargs):
        """``fn`` in the lease lane, as the service's own turn (passes, fencing: never refused)."""
        return await self._lanes["leases"].run(SERVICE, functools.partial(fn, *args, **kwargs), bounded=False)

    # ------------------------------------------------------------------ connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pid, uid, _ = peer_credentials(writer.get_extra_info("socket"))
            process = ProcessRef.of(pid)
        except (OSError, psutil.Error):  # gone before it could be asked who it is (or before its process was read)
            writer.close()
            return
        if self._connections.get(uid, 0) >= MAX_CONNECTIONS_PER_USER:
            writer.write(protocol.line({"id": None, "error": protocol.error_body(TTError(
                f"{user_name(uid)} has {MAX_CONNECTIONS_PER_USER} connections to the scheduler open: close some", status=429))}))
            writer.close()
            return
        self._connections[uid] = self._connections.get(uid, 0) + 1
        try:
            user = user_name(uid)
            caller = Caller(user, process, quota=self.settings.quota_for(user), server=f"{socket.gethostname()}:{pid}")
            while True:
                try:
                    raw = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(protocol.line({"id": None, "error": protocol.error_body(RequestError(
                        f"a request line is longer than {protocol.MAX_LINE} bytes"))}))
                    break
                if not raw:
                    break
                writer.write(await self._answer(raw, caller, uid))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away mid-way: nothing to tell anyone
        except asyncio.CancelledError:
            pass  # the service stops: the connection ends with it, quietly
        except Exception:
            log.exception("jupyter-tt scheduler: connection of uid %d failed", uid)
        finally:
            self._connections[uid] -= 1
            if not self._connections[uid]:
                del self._connections[uid]
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, raw: bytes, caller: Caller, uid: int) -> bytes:
        """The answer line to one request line. The call and the encoding of its result run in the
        operation's lane, as ``uid``'s turn: a large answer is built off the event loop."""
        request_id = None
        try:
            request = json.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise RequestError('a request is a JSON object {"id": N, "op": NAME, "args": {...}}')
            request_id = request.get("id")
            if not isinstance(request_id, (int, str, type(None))) or (isinstance(request_id, str) and len(request_id) > 64):
                request_id = None
            name, args = request["op"], request.get("args") or {}
            op = OPS.get(name)
            if op is None or not isinstance(args, dict):
                raise RequestError(f"unknown operation {name[:64]!r}: one of {', '.join(sorted(OPS))}")
            if uid != 0 and name == "submit":
                self._lease_requests.take(uid, time.monotonic())
            elif uid != 0 and name in REPORTS:
                self._report_requests.take(uid, time.monotonic())
            lane = self._lanes["reports" if name in REPORTS else "leases"]
            decoded = protocol.decode(args)

            def job() -> tuple[bytes, bool]:
                before = self.scheduler.db.total_changes if name in MUTATING else 0
                result = op(self, caller, uid, **decoded)
                changed = name in MUTATING and self.scheduler.db.total_changes != before
                if changed and self.guard.enforcing:
                    self._fence()  # before the answer: a kernel never learns of a lease its user cannot open yet
                return protocol.answer_line(request_id, result), changed

            answer, changed = await lane.run(uid, job)
            if uid != 0 and name in REPORTS:  # a large answer costs its reader more of their report budget
                self._report_requests.charge(uid, len(answer) / REPORT_BYTES_PER_TOKEN - 1, time.monotonic())
            if changed:
                await self._follow_processes()
            if name in RESETTING:
                self._passes.start_resets()
            return answer
        except TTError as e:
            if isinstance(e, Busy):  # a caller over budget waits on its own connection, rather than spin on refusals
                await asyncio.sleep(min(e.retry_after, MAX_REFUSAL_DELAY))
            return protocol.line({"id": request_id, "error": protocol.error_body(e)})
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            return protocol.line({"id": request_id, "error": protocol.error_body(RequestError(f"malformed request: {e}"))})
        except Exception as e:
            log.exception("jupyter-tt scheduler: a request of %s failed", caller.user)
            return protocol.line({"id": request_id, "error": protocol.error_body(e)})

    # ------------------------------------------------------------------ operations (run in the worker thread)

    def _viewer(self, caller: Caller, uid: int) -> str | None:
        return None if uid == 0 else caller.user  # root sees everything; everyone else their own in full

    def op_hello(self, caller, uid):
        return {"user": caller.user, "uid": uid, "inventory": self.scheduler.inventory.describe(),
                "socket": str(self.socket_path), **self.guard.describe(),
                "idle": {"timeout": self.settings.idle_timeout, "grace": self.settings.idle_grace}}

    def op_devices(self, caller, uid, fresh=False):
        return [d.to_json() for d in self.reader.devices(fresh=bool(fresh))]

    def op_submit(self, caller, uid, count, card_type="any", kernel_id=None, notebook=None, replaces=None):
        replaces = str(replaces)[:64] if replaces is not None else None
        return self.scheduler.submit(count, card_type, kernel_id=kernel_id, notebook=notebook, caller=caller,
                                     replaces=replaces)

    def op_check(self, caller, uid, request_id):
        return self.scheduler.check(str(request_id), caller=caller)

    def op_cancel(self, caller, uid, request_id):
        return self.scheduler.cancel(str(request_id), caller=caller)

    def op_release(self, caller, uid, lease_id, reason="released", crash=None):
        reason = clean_reason(str(reason)[:1000])[:200]
        return self.scheduler.release(str(lease_id), reason=f"{reason} (by {caller.user})",
                                      user=None if uid == 0 else caller.user, crash=_crash(crash))

    def op_attach_kernel(self, caller, uid, lease_id, pid):
        if not isinstance(pid, int) or pid <= 0:
            raise RequestError(f"pid must be a process id, not {pid!r}")
        owner = uid_of(pid)
        if owner is not None and owner != uid and uid != 0:
            raise LeaseError(f"process {pid} is not {caller.user}'s: a lease follows its holder's own kernel", status=403)
        return self.scheduler.attach_kernel(str(lease_id), pid, caller=caller)

    def op_detach_kernel(self, caller, uid, lease_id, crash=None):
        return self.scheduler.detach_kernel(str(lease_id), crash=_crash(crash), caller=caller)

    def op_lease_resets(self, caller, uid, lease_id):
        return self.scheduler.lease_resets(str(lease_id), caller=None if uid == 0 else caller)

    def op_get_lease(self, caller, uid, lease_id):
        return self.scheduler.get_lease(str(lease_id), viewer=self._viewer(caller, uid))

    def op_ended_lease(self, caller, uid, lease_id):
        ended = self.reader.ended_lease(str(lease_id), viewer=self._viewer(caller, uid))
        return list(ended) if ended else None

    def op_reconcile(self, caller, uid):
        return self.scheduler.reconcile()

    def op_leases(self, caller, uid):
        return self.reader.leases(viewer=self._viewer(caller, uid))

    def op_queue(self, caller, uid):
        return self.reader.queue(viewer=self._viewer(caller, uid))

    def op_history(self, caller, uid, limit=100, before=None):
        return self.reader.history_page(limit, before=before, viewer=self._viewer(caller, uid))

    def op_usage(self, caller, uid, since=0.0):
        return self.reader.usage(float(since))

    def op_usage_records(self, caller, uid, since=0.0, after=None, limit=1000):
        return self.reader.usage_records_page(float(since), after=after, limit=limit)

    def op_report(self, caller, uid):
        report = self.reader.report(viewer=self._viewer(caller, uid))
        return replace(report, scheduler=SchedulerInfo(mode="service", state_dir=self.scheduler.state_dir,
                                                       socket=str(self.socket_path), **self.guard.describe()))

    def op_retry_reset(self, caller, uid, device_id):
        if uid != 0:
            raise TTError("only root may reset a card again on a shared host: ask the host's admin", status=403)
        return self.scheduler.retry_reset(int(device_id))

    def op_timeout_message(self, caller, uid, waiting, timeout=None):
        if not isinstance(waiting, Waiting):
            raise RequestError("waiting must be a request's queue position, as check() returned it")
        return self.scheduler.timeout_message(waiting, timeout)


def _crash(crash) -> str | None:
    """A client's account of how its kernel ended (it asks for a reset of its own lease's cards)."""
    if crash is not None and not isinstance(crash, str):
        raise RequestError(f"crash says how the kernel ended, as text, not {crash!r}")
    return crash and clean_reason(crash[:1000])[:200]


OPS = {name[3:]: fn for name, fn in vars(SchedulerService).items() if name.startswith("op_")}
#: Operations after which the processes to follow and the nodes' owners may have changed (if they wrote).
MUTATING = {"submit", "check", "cancel", "release", "attach_kernel", "detach_kernel", "reconcile", "retry_reset"}
#: Operations that may have put a card out for a reset: run it now, not at the next tick.
RESETTING = {"release", "detach_kernel", "retry_reset"}


def unfence(socket_path: str, state_dir: str) -> list[str]:
    """Give the device nodes back the owners and modes they had before the service first fenced them
    (``jupyter tt scheduler --unfence``, for uninstalling). Refused while a service still serves."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(socket_path)
    except OSError:
        pass
    else:
        raise ConfigError(f"the scheduler service still serves {socket_path} and would fence the nodes again: "
                          f"stop it first (systemctl stop jupyter-tt-scheduler)")
    finally:
        probe.close()
    guard = NodeGuard(state_dir, reason_not=can_change_owners())
    if not guard.enforcing:
        raise ConfigError(f"cannot give the nodes back: {guard.reason_not}")
    return guard.restore()


def main(socket_path: str, state_dir: str, config_file: str | None) -> int:
    """Run the service in the foreground (``jupyter tt scheduler``)."""
    from traitlets.config import Config
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"no configuration file {path}: give --config an existing .py or .json file")
        loader = JSONFileConfigLoader if path.suffix == ".json" else PyFileConfigLoader
        config = loader(path.name, str(path.parent)).load_config()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # The event loop, the lease lane and the reports lane share the GIL. A thread back from a system call
    # waits for a busy one to hand the GIL over, up to this interval each time: 0.1 ms rather than 5, so
    # that a lease operation's hundred system calls wait for a long report's Python work by that much.
    sys.setswitchinterval(0.0001)
    service = SchedulerService(TTSettings(config=config), socket_path, state_dir)
    asyncio.run(service.serve())
    return 0
