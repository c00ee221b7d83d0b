"""Fair service for the scheduler service: each user's calls take turns, none can starve another's.

The anchors are Slurm's per-user RPC rate limit (a token bucket: ``rl_bucket_size``, ``rl_refill_rate``)
and kube-apiserver's API Priority and Fairness (a queue per flow, lease-critical calls on their own
priority level). Here:

- ``FairQueue``: calls waiting for one worker thread, taken round robin across users (each user's own
  in the order they came), with a bound on how many one user may have queued or running. Over it, the
  call is refused at once (``Busy``, 429 with "retry in N s") instead of slowing anyone else down.
- ``FairLane``: a FairQueue with its worker thread, for an event loop. The service has two: lease
  operations, and reports (on their own SQLite connection), so a long read never holds a lease.
- ``TokenBucket``: a rate per user (how fast one user may take new leases), refilling continuously.

``FairQueue`` and ``TokenBucket`` are pure (the clock is passed in) and tested on their own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import TTError


class Busy(TTError):
    """A user is over a budget: refused at once, with when to try again (429)."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"{message}: retry in {self.retry_after} s", status=429)


@dataclass
class FairQueue:
    """Items of many users, taken round robin across users; ``per_user`` bounds one user's items
    (queued and taken but not yet ``done``). 0: no bound (the service's own passes)."""

    per_user: int
    _queues: OrderedDict[Hashable, deque] = field(default_factory=OrderedDict)
    _held: dict[Hashable, int] = field(default_factory=dict)

    def push(self, user: Hashable, item: Any, *, bounded: bool = True) -> bool:
        """Queue ``item`` for ``user``; False (and nothing queued) when they already have ``per_user`` in."""
        held = self._held.get(user, 0)
        if bounded and self.per_user and held >= self.per_user:
            return False
        self._held[user] = held + 1
        self._queues.setdefault(user, deque()).append(item)
        return True

    def pop(self) -> tuple[Hashable, Any] | None:
        """The next item: the first user in the rotation gives one, and goes to the back of it."""
        if not self._queues:
            return None
        user, items = next(iter(self._queues.items()))
        item = items.popleft()
        del self._queues[user]
        if items:
            self._queues[user] = items  # to the back: everyone else with something queued goes first
        return user, item

    def done(self, user: Hashable) -> None:
        """One of ``user``'s items has been served (or dropped)."""
        held = self._held.get(user, 0) - 1
        if held > 0:
            self._held[user] = held
        else:
            self._held.pop(user, None)

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())


@dataclass
class TokenBucket:
    """``burst`` tokens per key, refilled at ``rate`` a second; ``take`` spends one or raises Busy."""

    burst: float
    rate: float
    what: str = "requests"
    _tokens: dict[Hashable, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, when)

    def take(self, key: Hashable, now: float) -> None:
        if self.rate <= 0:
            return
        tokens, when = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens < 1:
            self._tokens[key] = (tokens, now)
            raise Busy(f"you have made {self.burst:g} {self.what} in quick succession, and may make "
                       f"{self.rate:g} a second on this host", retry_after=(1 - tokens) / self.rate)
        self._tokens[key] = (tokens - 1, now)
        if len(self._tokens) > 4096:  # forget full buckets: a bounded map, whatever the number of users
            full = [k for k, (t, w) in self._tokens.items() if t + (now - w) * self.rate >= self.burst]
            for k in full:
                del self._tokens[k]


class FairLane:
    """One worker thread fed by a FairQueue, for an event loop: ``await lane.run(user, fn)``."""

    def __init__(self, name: str, per_user: int):
        self.name = name
        self.queue = FairQueue(per_user)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"jupyter-tt-{name}")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._mean = 0.01  # seconds a call takes, a moving average (for "retry in N s")

    async def run(self, user: Hashable, fn: Callable[[], Any], *, bounded: bool = True) -> Any:
        """``fn()`` in the lane's thread, when ``user``'s turn comes; Busy if they have too many in."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve())
        future = loop.create_future()
        if not self.queue.push(user, (fn, future), bounded=bounded):
            raise Busy(f"you have {self.queue.per_user} requests to the scheduler in progress already",
                       retry_after=self._mean * (self.queue.waiting() + 1))
        self._wake.set()
        try:
            return await future
        finally:
            self.queue.done(user)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = self.queue.pop()
            if taken is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            _, (fn, future) = taken
            if future.done():  # its caller went away while it waited
                continue
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._pool, fn)
            except asyncio.CancelledError:  # the lane stops
                future.cancel()
                raise
            except Exception as e:  # handed to the caller, whatever it is
                if not future.done():
                    future.set_exception(e)
            else:
                if not future.done():
                    future.set_result(result)
            self._mean = 0.9 * self._mean + 0.1 * (time.monotonic() - started)

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)
