"""The reconcile loop that the scheduler service and a personal-mode Jupyter server share.

A pass runs every ``interval`` seconds, and soon after anything that may have changed the state
(``soon``): one at a time, and asks that come while one runs fold into one more pass after it. After
each pass, the resets after a crash that wait run in a thread of their own (they take seconds a
card), one run at a time; a run that reset a card asks for a pass, which returns the card to the
pool once its heartbeat advances. A failing pass or reset is logged and never ends the loop. Once
``stop`` has begun, no pass starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("jupyter_tt.scheduler")


class ReconcileLoop:
    """``run_pass``: one pass, as its owner does it (the service: reconcile, follow processes, fence
    nodes; a Jupyter server: look at the state, emit events, reclaim idle kernels). ``run_resets``:
    the scheduler's ``run_resets`` where this process resets cards after a crash, else None. ``log``:
    where failures go (a Jupyter server passes its own log, so they appear in its format)."""

    def __init__(self, run_pass: Callable[[], Awaitable[None]], *, interval: float,
                 run_resets: Callable[[], list[int]] | None = None, name: str = "jupyter-tt",
                 log: logging.Logger | logging.LoggerAdapter = log):
        self._run_pass, self.interval, self._run_resets, self.name = run_pass, interval, run_resets, name
        self.log = log
        self._resetter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jupyter-tt-reset") if run_resets else None
        self._resetting: asyncio.Future | None = None
        self._running = False
        self._again = False
        self._stopped = False
        self._ticker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Tick from now on (call it on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._ticker = self._loop.create_task(self._tick())

    async def run_once(self) -> None:
        """A pass now (after the one under way, if any), then the resets it left."""
        if self._stopped:
            return
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            while True:
                self._again = False
                try:
                    await self._run_pass()
                    self.start_resets()
                except Exception:  # a bad pass, an unreachable scheduler or a lost resetter: never the end of the passes
                    self.log.exception("%s: a reconcile pass failed", self.name)
                if not self._again or self._stopped:
                    break
        finally:
            self._running = False

    def soon(self) -> None:
        """A pass soon, from any thread (a change this process made, a followed process that exited)."""
        if self._stopped:
            return
        if self._loop is None:  # before start(): only from the event loop's own thread
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self.run_once()))

    def start_resets(self) -> None:
        """Run the resets that wait, in their own thread, unless a run is under way."""
        if self._resetter is None or self._run_resets is None or self._stopped:
            return
        if self._resetting is not None and not self._resetting.done():
            return
        self._resetting = asyncio.get_running_loop().run_in_executor(self._resetter, self._run_resets)

        def finished(future: asyncio.Future) -> None:
            if future.cancelled():
                return
            if future.exception():
                self.log.error("%s: resetting failed: %s", self.name, future.exception())
            elif future.result():
                self.soon()

        self._resetting.add_done_callback(finished)

    def stop(self) -> None:
        """No pass starts from now on; a reset under way finishes in its thread, none starts."""
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._resetter is not None:
            self._resetter.shutdown(wait=False, cancel_futures=True)

    async def _tick(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self.interval)
            await self.run_once()
