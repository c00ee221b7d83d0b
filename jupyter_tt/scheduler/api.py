"""What every scheduler answers, and how an event loop calls one without blocking.

Two implementations: ``Scheduler`` (personal mode: the state in this user's folder, opened by this
process) and ``ServiceClient`` (the host's scheduler service, over its Unix socket). Callers hold a
``SchedulerAPI`` and do not know which.

Every method is blocking (SQLite and ``flock``, or a socket round trip). On a Jupyter server's event
loop, run them with ``call()`` (an executor, with a deadline) and wait with ``acquire_async``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from ..errors import SchedulerUnavailable, TTError, WaitTimeout
from .leases import Lease, Page, PendingReset, Report, UsageRecord, UsageTotal, Waiting
from .placement import ANY

if TYPE_CHECKING:
    from ..devices import Device

#: Short calls (a pass, a report) from event loops; a stuck call keeps one thread, not the loop.
_CALLS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jupyter-tt-call")
#: Kernels waiting in the queue: each waits in a thread of its own, mostly asleep.
_WAITS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="jupyter-tt-wait")

#: Seconds an event loop waits for one scheduler call before it reports the scheduler unavailable.
CALL_DEADLINE = 20.0


async def call(fn: Callable, *args: Any, deadline: float = CALL_DEADLINE, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread: the event loop goes on meanwhile. After ``deadline``
    seconds, SchedulerUnavailable (the call itself cannot be stopped and finishes on its own)."""
    future = asyncio.get_running_loop().run_in_executor(_CALLS, functools.partial(fn, *args, **kwargs))
    try:
        return await asyncio.wait_for(future, deadline)
    except asyncio.TimeoutError:
        raise SchedulerUnavailable(
            f"the device scheduler did not answer within {deadline:g} s. If a scheduler service runs on this host, "
            f"check it (systemctl status jupyter-tt-scheduler); in personal mode, look for a hung jupyter-tt process of yours"
        ) from None


class Cancelled(Exception):
    """A wait in the queue was stopped by its caller."""


class SchedulerAPI(abc.ABC):
    """Leases of a host's devices, as one caller sees them (see ``Scheduler`` for what each call means)."""

    #: "personal" or "service"
    mode: str
    #: whom this process's requests are accounted to
    user: str
    #: where the state is (a folder in personal mode, the socket for the service)
    state_dir: str
    #: the devices' source: ``kind``, ``key``, ``simulated`` and ``describe()``
    inventory: Any
    #: seconds between a waiter's looks at the queue
    poll_interval = 0.2
    #: called after this process changed the state (personal mode; the service changes it elsewhere)
    listeners: list[Callable[[], None]]

    @abc.abstractmethod
    def devices(self, fresh: bool = False) -> list[Device]: ...

    @abc.abstractmethod
    def submit(self, count: int, card_type: str = ANY, *, kernel_id: str | None = None,
               notebook: str | None = None, replaces: str | None = None) -> Lease | Waiting: ...

    @abc.abstractmethod
    def check(self, request_id: str) -> Lease | Waiting: ...

    @abc.abstractmethod
    def cancel(self, request_id: str) -> Lease | None: ...

    @abc.abstractmethod
    def release(self, lease_id: str, *, reason: str = "released", user: str | None = None,
                crash: str | None = None) -> bool: ...

    @abc.abstractmethod
    def attach_kernel(self, lease_id: str, pid: int) -> None: ...

    @abc.abstractmethod
    def detach_kernel(self, lease_id: str, *, crash: str | None = None) -> bool: ...

    @abc.abstractmethod
    def lease_resets(self, lease_id: str) -> list[PendingReset]: ...

    @abc.abstractmethod
    def get_lease(self, lease_id: str) -> Lease | None: ...

    @abc.abstractmethod
    def ended_lease(self, lease_id: str) -> tuple[Lease, str] | None: ...

    @abc.abstractmethod
    def reconcile(self) -> list[str]: ...

    @abc.abstractmethod
    def leases(self) -> list[Lease]: ...

    @abc.abstractmethod
    def queue(self) -> list[Waiting]: ...

    @abc.abstractmethod
    def history_page(self, limit: int = 100, *, before: str | None = None) -> Page: ...

    def history(self, limit: int = 100, *, before: str | None = None) -> list[dict]:
        """Ended leases, the latest first: ``limit`` (1 to 1000) of them, ended before the cursor ``before``."""
        return self.history_page(limit, before=before).items

    @abc.abstractmethod
    def usage(self, since: float = 0.0) -> list[UsageTotal]: ...

    @abc.abstractmethod
    def usage_records_page(self, since: float = 0.0, *, after: str | None = None, limit: int = 1000) -> Page: ...

    def usage_records(self, since: float = 0.0) -> list[UsageRecord]:
        """Every lease that held devices after ``since`` (epoch seconds), held ones included, oldest first:
        page after page, each one bounded (however long the history)."""
        records: list[UsageRecord] = []
        cursor = None
        while True:
            page = self.usage_records_page(since, after=cursor)
            records.extend(page.items)
            if page.next is None:
                return records
            cursor = page.next

    @abc.abstractmethod
    def retry_reset(self, device_id: int) -> bool: ...

    @abc.abstractmethod
    def report(self) -> Report: ...

    @abc.abstractmethod
    def timeout_message(self, waiting: Waiting, timeout: float | None) -> str: ...

    def acquire(
        self,
        count: int,
        card_type: str = ANY,
        *,
        kernel_id: str | None = None,
        notebook: str | None = None,
        timeout: float | None = None,
        on_wait: Callable[[Waiting], None] | None = None,
        stop: threading.Event | None = None,
        replaces: str | None = None,
    ) -> Lease:
        """Block until the devices are leased: WaitTimeout after ``timeout`` seconds, Cancelled when
        ``stop`` is set. Either way the request leaves the queue. ``replaces``: see ``Scheduler.submit``."""
        stop = stop or threading.Event()  # never set: the wait is a plain sleep
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while True:  # over the host's lease rate (429): wait for the bucket, within the timeout
            try:
                result = self.submit(count, card_type, kernel_id=kernel_id, notebook=notebook, replaces=replaces)
                break
            except TTError as e:
                if e.status_code != 429 or time.monotonic() + 1 > deadline:
                    raise
                if stop.wait(1.0):
                    raise Cancelled() from None
        reported = None
        try:
            while isinstance(result, Waiting):
                if on_wait and result.position != reported:
                    on_wait(result)
                    reported = result.position
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    lease = self.cancel(result.request_id)
                    if lease:
                        return lease
                    raise WaitTimeout(self.timeout_message(result, timeout))
                if stop.wait(min(self.poll_interval, remaining)):
                    raise Cancelled()
                result = self.check(result.request_id)
            return result
        except BaseException:
            if isinstance(result, Waiting):  # cancelled or failed while queued: leave no trace
                lease = self.cancel(result.request_id)
                if lease:
                    self.release(lease.id, reason="request cancelled while granted")
            raise

    async def acquire_async(self, count: int, card_type: str = ANY, *, timeout: float | None = None, **kwargs) -> Lease:
        """``acquire`` for an event loop: the wait runs in a thread. Cancelling the task leaves the queue."""
        stop = threading.Event()
        waiting = asyncio.get_running_loop().run_in_executor(
            _WAITS, functools.partial(self.acquire, count, card_type, timeout=timeout, stop=stop, **kwargs)
        )
        try:
            # A margin past the wait's own timeout: the thread reports WaitTimeout itself, unless a
            # scheduler call inside it hangs.
            limit = None if timeout is None else timeout + CALL_DEADLINE
            return await asyncio.wait_for(asyncio.shield(waiting), limit)
        except asyncio.TimeoutError:
            stop.set()
            raise SchedulerUnavailable(f"the device scheduler did not answer while this kernel waited ({limit:g} s)") from None
        except asyncio.CancelledError:
            stop.set()  # the thread leaves the queue; if it was granted just now, the lease goes back
            with contextlib.suppress(BaseException):
                lease = await asyncio.wait_for(waiting, CALL_DEADLINE)
                await call(self.release, lease.id, reason="request cancelled while granted")
            raise
