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

    retry_after: float  # always set: seconds until a call would be taken

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

    def pop(self, skip: frozenset | set = frozenset()) -> tuple[Hashable, Any] | None:
        """The next item: the first user in the rotation (but those in ``skip``) gives one, and goes to
        the back of it."""
        user = next((u for u in self._queues if u not in skip), None)
        if user is None:
            return None
        items = self._queues.pop(user)
        item = items.popleft()
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
            raise Busy(f"too many {self.what} ({self.burst:g} at once at most): you may make {self.rate:g} a second "
                       f"on this host", retry_after=(1 - tokens) / self.rate)
        self._tokens[key] = (tokens - 1, now)
        self._forget_full(now)

    def charge(self, key: Hashable, cost: float, now: float) -> None:
        """Spend ``cost`` more tokens after the fact (a call turned out large), down to ``-burst`` at most:
        the next calls wait until the bucket has refilled. kube-apiserver's fairness charges a LIST by
        the number of objects it returns in the same way."""
        if self.rate <= 0 or cost <= 0:
            return
        tokens, when = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        self._tokens[key] = (max(tokens - cost, -self.burst), now)

    def _forget_full(self, now: float) -> None:
        if len(self._tokens) > 4096:  # forget full buckets: a bounded map, whatever the number of users
            full = [k for k, (t, w) in self._tokens.items() if t + (now - w) * self.rate >= self.burst]
            for k in full:
                del self._tokens[k]


class FairLane:
    """Worker threads fed by a FairQueue, for an event loop: ``await lane.run(user, fn)``.

    With several ``workers``, each user has at most one call running at a time: however many calls
    one user has queued, a worker is free for the next user's."""

    def __init__(self, name: str, per_user: int, workers: int = 1):
        self.name = name
        self.queue = FairQueue(per_user)
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"jupyter-tt-{name}")
        self._running: dict[Hashable, int] = {}
        self._wake = asyncio.Event()  # bound to a loop at its first wait, not here
        self._task: asyncio.Task | None = None
        self._mean = 0.01  # seconds a call takes, a moving average (for "retry in N s")

    async def run(self, user: Hashable, fn: Callable[[], Any], *, bounded: bool = True) -> Any:
        """``fn()`` in one of the lane's threads, when ``user``'s turn comes; Busy if they have too many in."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._serve())
        future = loop.create_future()
        if not self.queue.push(user, (fn, future), bounded=bounded):
            raise Busy(f"you have {self.queue.per_user} requests to the scheduler in progress already",
                       retry_after=self._mean * (self.queue.waiting() + 1) / self.workers)
        self._wake.set()
        try:
            return await future
        finally:
            self.queue.done(user)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        jobs: set[asyncio.Task] = set()
        try:
            while True:
                while sum(self._running.values()) < self.workers:
                    taken = self.queue.pop(skip=set(self._running) if self.workers > 1 else frozenset())
                    if taken is None:
                        break
                    user, (fn, future) = taken
                    if future.done():  # its caller went away while it waited
                        continue
                    self._running[user] = self._running.get(user, 0) + 1
                    job = loop.create_task(self._one(user, fn, future))
                    jobs.add(job)
                    job.add_done_callback(jobs.discard)
                self._wake.clear()
                await self._wake.wait()
        finally:
            for job in jobs:
                job.cancel()

    async def _one(self, user: Hashable, fn: Callable[[], Any], future: asyncio.Future) -> None:
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except asyncio.CancelledError:  # the lane stops
            future.cancel()
            raise
        except Exception as e:  # handed to the caller, whatever it is
            if not future.done():
                future.set_exception(e)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self._mean = 0.9 * self._mean + 0.1 * (time.monotonic() - started)
            self._running[user] -= 1
            if not self._running[user]:
                del self._running[user]
            self._wake.set()

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)
