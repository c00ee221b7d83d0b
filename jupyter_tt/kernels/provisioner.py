"""``tt-provisioner``: a local kernel that holds Tenstorrent devices for its whole life.

jupyter_client calls, for each kernel:

- ``pre_launch`` before every start and restart: we get (or keep) the lease, waiting in the queue if
  needed, and give the kernel ``TT_VISIBLE_DEVICES`` (the leased BDFs), ``JUPYTER_TT_LEASE`` and its
  caches' folders (``TT_METAL_CACHE``, ``TT_CACHE_PATH``: ``jupyter_tt.caches``);
- ``launch_kernel``: the lease now follows the kernel process; a failed launch releases it;
- ``post_launch``: we hook the restarter's "dead" event, after which jupyter_client cleans up nothing;
- ``cleanup(restart)``: a restart keeps the devices, anything else releases them (shutdown, culling).
  A kernel that ended abnormally (killed by a signal, a non-zero exit) has its cards reset first
  where the scheduler resets after a crash: the restart waits for it (``_wait_for_resets``);
- ``choose(devices, card_type)`` (JupyterLab's device picker, then a restart): the restart gives the
  lease back and asks for the new devices, waiting in the queue if it must.

A kernel waiting in the queue can be told to stop waiting (``cancel_waits``): the server extension
does it for all of them when the server stops, before any kernel is shut down (else the first card
released would go to a kernel that is about to be stopped). A new kernel for a notebook that already
waits takes the older one's place in the queue, and the older one stops waiting (JupyterLab lists a
session only once its kernel has started, so a reloaded page asks again; without this the older
kernel, with no page, would get the card).

What no callback covers (the kernel or the server killed with SIGKILL) the scheduler reclaims by
itself: see ``jupyter_tt.scheduler``. These callbacks run on the Jupyter server's event loop, so
every scheduler call goes to a worker thread (``call``) and the queue wait to ``acquire_async``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float, Int, Unicode, validate

from ..caches import Caches, lease_environment
from ..config import TTSettings
from ..errors import ConfigError, TTError, WaitCancelled, WaitTimeout
from ..scheduler import DeviceRequest, Lease, SchedulerAPI, Waiting, call, open_scheduler
from ..scheduler.reset import RESET_TIMEOUT
from ..scheduler.resets import LINKED_VERIFY_TIMEOUT
from .mesh import mesh_device_name

#: The least a restart waits for its cards' reset: the tool (up to RESET_TIMEOUT), then the firmware's
#: heartbeat, up to reset_verify_timeout (30 s) for a lone card and minutes for one linked to others by
#: Ethernet (LINKED_VERIFY_TIMEOUT). A kernelspec's short queue wait does not cut it.
RESET_WAIT = RESET_TIMEOUT + LINKED_VERIFY_TIMEOUT


@dataclass(eq=False)
class _Wait:
    """One kernel of this process waiting in the queue: its notebook and the task that waits."""

    kernel_id: str | None
    notebook: str | None
    task: asyncio.Future
    #: Set by ``cancel_waits`` (or by a newer kernel of the notebook): the message the kernel's start fails with.
    why: str | None = None
    #: Its request in the queue, once it waits there: a newer kernel of the notebook takes its place.
    request_id: str | None = None


#: This process's kernels waiting in the queue (at most one entry per kernel; they leave when done).
_WAITS: set[_Wait] = set()
#: Set when this process's server stops: kernels that begin waiting afterwards fail at once.
_closing: str | None = None


def cancel_waits(why: str, *, closing: bool = False) -> list[str | None]:
    """End the waits in the queue of this process's kernels: each kernel's start fails with ``why``, and its
    request leaves the queue. ``closing``: the server stops, so waits that begin later fail at once too.
    Returns the kernel ids whose waits were ended."""
    global _closing
    if closing:
        _closing = why
    ended = []
    for wait in list(_WAITS):
        if wait.why is None and not wait.task.done():
            wait.why = why
            wait.task.cancel()
            ended.append(wait.kernel_id)
    return ended


class TTProvisioner(LocalProvisioner):
    """Starts a local kernel on devices leased from the host-wide scheduler.

    Its ``config`` in the kernelspec: ``devices`` (how many device nodes, 0 for none), ``card_type``
    ("n150", "n300" or "any") and ``wait_timeout`` (seconds in the queue before giving up).
    """

    devices = Int(1, help="How many devices (cards) the kernel gets; 0 for none.", config=True)
    card_type = Unicode("any", help="'n150', 'n300' or 'any'.", config=True)
    wait_timeout = Float(None, allow_none=True, help="Seconds to wait for free devices.", config=True)

    lease: Lease | None = None
    _dead_hooked = False
    #: Why the next shutdown ends the lease, when the server (not the user) shuts the kernel down.
    release_reason: str | None = None
    #: How the last kernel process ended (see ``_abnormal_end``): its status if it ended by itself,
    #: whether it is being stopped (and was asked to shut down), the signal it took if it did not.
    _died: int | None = None
    _stopping = _asked = False
    _forced: str | None = None
    #: The lease's cache entries, held while it lasts, and the variables they gave the kernel.
    _cache_holds: Sequence = ()
    _cache_env: tuple | None = None

    def __init__(self, **kwargs: Any):
        known = {"devices", "card_type", "wait_timeout"}
        base = {"kernel_id", "kernel_spec", "connection_info", "parent", "config", "log"}
        unknown = set(kwargs) - known - base
        if unknown:
            raise ConfigError(
                f"unknown key{'s' * (len(unknown) > 1)} {', '.join(sorted(unknown))} in the kernelspec's "
                f"tt-provisioner config: use devices, card_type and wait_timeout"
            )
        try:
            super().__init__(**kwargs)
        except TTError:
            raise
        except Exception as e:  # a TraitError names the trait but not the fix
            raise ConfigError(
                f"bad tt-provisioner config in the kernelspec ({e}): devices is a whole number, "
                f"card_type one of n150, n300, any, wait_timeout a number of seconds"
            ) from e
        self.settings = TTSettings(parent=self)

    @validate("devices")
    def _check_devices(self, proposal):
        return DeviceRequest.parse(proposal["value"], what="tt-provisioner config: devices", error=ConfigError).devices

    @validate("card_type")
    def _check_card_type(self, proposal):
        return DeviceRequest.parse(0, proposal["value"], error=ConfigError).card_type

    async def scheduler(self) -> SchedulerAPI:
        return await call(open_scheduler, self.settings)

    def choose(self, devices: int, card_type: str) -> None:
        """Ask for other devices (JupyterLab's device picker): the next restart leases them instead."""
        self.devices, self.card_type = devices, card_type  # validated by the traits

    def _lease_fits(self) -> bool:
        lease = self.lease
        return lease is not None and len(lease.devices) == self.devices and (
            self.card_type == "any" or set(lease.card_types) == {self.card_type})

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        if self.lease and not self._lease_fits():  # other devices were chosen: give these back first
            await self._release(f"devices changed to {self.devices}× {self.card_type} from JupyterLab")
        if self.devices and await self._lease_still_held():
            await self._wait_for_resets()  # after a crash; a card that failed its reset gives the lease up
        if self.devices and self.lease is None:
            # jupyter_server names the session (the notebook's path) in the kernel's environment.
            self.lease = await self._acquire(kwargs.get("env", {}).get("JPY_SESSION_NAME"))
        try:
            kwargs = await super().pre_launch(**kwargs)
        except BaseException:
            await self._release("kernel launch failed")
            raise
        env = kwargs["env"]
        env.update(self.settings.environment())
        env["TT_VISIBLE_DEVICES"] = ",".join(self.lease.bdfs) if self.lease else ""
        if self.lease:
            env["JUPYTER_TT_LEASE"] = self.lease.id
            env.update(await self._cache_environment(env.get("HF_MODEL")))
        else:
            env.pop("JUPYTER_TT_LEASE", None)
        return kwargs

    async def _cache_environment(self, model: str | None) -> dict[str, str]:
        """TT_METAL_CACHE (and TT_CACHE_PATH where the kernel's environment names its model) for the lease,
        held while the lease lasts: see ``jupyter_tt.caches``."""
        lease = self.lease
        assert lease is not None
        if self._cache_env is not None and self._cache_env[0] == (lease.id, model):
            return self._cache_env[1]
        self._let_go_of_caches()
        card_type = lease.card_types[0] if len(lease.card_types) == 1 else "mixed"
        mesh_device = mesh_device_name(card_type, len(lease.devices), lease.chips)
        try:
            env, self._cache_holds = await call(lease_environment, Caches.from_settings(self.settings), lease.bdfs,
                                                mesh_device, model)
        except TTError as e:  # the kernel still starts: tt-metal then uses its own default folder
            self.log.warning("Kernel %s: no cache folder for its lease (%s)", self.kernel_id, e)
            return {}
        self._cache_env = ((lease.id, model), env)
        return env

    def _let_go_of_caches(self) -> None:
        for hold in self._cache_holds:
            hold.close()
        self._cache_holds, self._cache_env = (), None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        try:
            connection_info = await super().launch_kernel(cmd, **kwargs)
            if self.lease:
                await call((await self.scheduler()).attach_kernel, self.lease.id, self.pid)
        except BaseException:
            await self._release("kernel launch failed")
            raise
        return connection_info

    async def post_launch(self, **kwargs: Any) -> None:
        await super().post_launch(**kwargs)
        km = self.parent
        if km is not None and not self._dead_hooked and getattr(km, "_restarter", None) is not None:
            # After the restart limit the restarter fires "dead" and jupyter_server drops the kernel
            # without calling cleanup(): release here, or the devices would wait for reclaiming.
            km.add_restart_callback(self._on_dead, "dead")
            self._dead_hooked = True

    async def poll(self) -> int | None:
        code = await super().poll()
        if code is not None and self.process is not None and not self._stopping and self._died is None:
            self._died = code  # it ended by itself (the restarter's look, or a shutdown finding it dead)
        return code

    async def shutdown_requested(self, restart: bool = False) -> None:
        await self.poll()  # dead already, before anyone asked?
        self._stopping = self._asked = True
        await super().shutdown_requested(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        self._stop_with("SIGTERM")
        await super().terminate(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        self._stop_with("SIGKILL")
        await super().kill(restart=restart)

    def _stop_with(self, name: str) -> None:
        # A kernel asked to shut down that did not is hung; a kill asked for at once
        # (shutdown_kernel(now=True)) is a shutdown; a dead kernel's "kill" changes nothing.
        if self._asked and self._forced is None and self.process is not None and self.process.poll() is None:
            self._forced = f"kernel process {self.pid} did not stop when asked and was sent {name}"
        self._stopping = True

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        crash = self._abnormal_end()
        if restart and self.lease:
            if crash:
                self.log.warning("Kernel %s: %s; its devices are reset before it restarts", self.kernel_id, crash)
            if not await call((await self.scheduler()).detach_kernel, self.lease.id, crash=crash):
                self.lease = None  # reclaimed meanwhile: pre_launch asks again
        else:
            await self._release(self.release_reason or (crash and f"kernel ended: {crash}") or "kernel shut down", crash=crash)

    def _on_dead(self) -> None:
        # jupyter_client calls restart callbacks synchronously on the event loop: release in a task.
        asyncio.ensure_future(self._release("kernel died and the restart limit was reached", crash=self._abnormal_end()))

    def _abnormal_end(self) -> str | None:
        """How the kernel process that just ended ended abnormally, or None if it ended cleanly.

        Abnormal: it died by itself with a signal (the OOM killer's SIGKILL, a segfault) or a non-zero
        exit, or it had to be killed because it did not stop when asked (hung, maybe inside a device
        call). Its cards may be mid-operation, so they are reset before the next use. A kernel that
        stopped when asked, or was stopped at once on purpose (``now=True``), ended cleanly whatever
        its status (jupyter_client interrupts it first: one still starting up dies of that SIGINT).
        Reading it forgets it."""
        died, forced = self._died, self._forced
        self._died, self._forced, self._stopping, self._asked = None, None, False, False
        if self.process is not None and self.process.poll() is None:  # the kill's wait timed out
            return f"kernel process {self.pid} did not exit when it was stopped"
        if forced:
            return forced
        if not died:
            return None
        if died < 0:
            try:
                return f"kernel process {self.pid} was killed by {signal.Signals(-died).name}"
            except ValueError:
                return f"kernel process {self.pid} was killed by signal {-died}"
        return f"kernel process {self.pid} exited with code {died}"

    async def get_provisioner_info(self) -> dict[str, Any]:
        """jupyter_client's persistence hook (async, as the base class's): its info and the lease's id."""
        info = await super().get_provisioner_info()
        info["lease_id"] = self.lease.id if self.lease else None
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        lease_id = provisioner_info.get("lease_id")
        self.lease = await call((await self.scheduler()).get_lease, lease_id) if lease_id else None

    # ------------------------------------------------------------------

    async def _lease_still_held(self) -> bool:
        if self.lease is None:
            return False
        if await call((await self.scheduler()).get_lease, self.lease.id) is None:
            self.log.warning("Lease %s of kernel %s ended while it restarted; asking again", self.lease.id, self.kernel_id)
            self.lease = None
            return False
        return True

    @property
    def _timeout(self) -> float:
        return self.wait_timeout if self.wait_timeout is not None else self.settings.wait_timeout

    async def _wait_for_resets(self) -> None:
        """Start the kernel again only once the cards its crash left are reset and beat again.

        A card that failed its reset is unhealthy: the lease is given back (the card stays out of the
        pool, with the reason) and pre_launch asks for other devices, waiting in the queue if it must."""
        scheduler, lease = await self.scheduler(), self.lease
        if lease is None:  # nothing to wait for: no lease yet
            return
        limit = max(self._timeout, RESET_WAIT)
        deadline = asyncio.get_running_loop().time() + limit
        said = None
        while pending := await call(scheduler.lease_resets, lease.id):
            if failed := [p.message for p in pending if p.failed]:
                self.log.warning("Kernel %s: %s; asking for other devices", self.kernel_id, "; ".join(failed))
                await self._release("; ".join(failed))
                return
            message = "; ".join(p.message for p in pending)
            if message != said:
                self.log.info("Kernel %s restarts once its devices are reset: %s", self.kernel_id, message)
                said = message
            if asyncio.get_running_loop().time() > deadline:
                await self._release(f"its devices were not reset within {limit:g} s")
                raise WaitTimeout(
                    f"the kernel's devices were not reset within {limit:g} s after it crashed ({message}). "
                    f"Restart the kernel to wait again; if a process holds a device, stop it; "
                    f"`jupyter tt devices` shows each device's state")
            await asyncio.sleep(scheduler.poll_interval)

    async def _acquire(self, notebook: str | None) -> Lease:
        timeout = self._timeout
        if _closing:
            raise WaitCancelled(_closing)
        scheduler, loop = await self.scheduler(), asyncio.get_running_loop()
        # A kernel of this notebook that waits already (its page was reloaded) gives this one its place.
        older = [w for w in _WAITS if notebook and w.notebook == notebook and w.why is None and not w.task.done()]
        replaces = next((w.request_id for w in older if w.request_id), None)
        for w in older:
            w.why = (f"a newer kernel for {notebook} took this one's place in the queue (the page was reloaded, or "
                     f"the notebook opened again)")
            self.log.info("Kernel %s takes the place of kernel %s in the queue for %s", self.kernel_id, w.kernel_id,
                          notebook)

        def stop_older() -> None:  # once this request is in the queue in their place
            for w in older:
                w.task.cancel()

        def report(waiting: Waiting) -> None:  # in the wait's thread
            wait.request_id = waiting.request_id
            if older:
                loop.call_soon_threadsafe(stop_older)
            self.log.info("Kernel %s is %s", self.kernel_id, waiting.message)

        wait = _Wait(self.kernel_id, notebook, asyncio.ensure_future(scheduler.acquire_async(
            self.devices, self.card_type, kernel_id=self.kernel_id, notebook=notebook, timeout=timeout, on_wait=report,
            replaces=replaces,
        )))
        _WAITS.add(wait)
        try:
            lease = await wait.task
        except (asyncio.CancelledError, TTError) as e:
            if wait.why is None:  # our caller was cancelled, or the wait failed by itself
                raise
            self.log.info("Kernel %s stopped waiting for devices: %s", self.kernel_id, wait.why)
            raise WaitCancelled(f"the kernel stopped waiting for devices: {wait.why}") from (
                None if isinstance(e, asyncio.CancelledError) else e)
        finally:
            _WAITS.discard(wait)
            stop_older()  # granted at once (no wait to report), or failed: the older waits end either way
        if wait.why is not None:  # granted just as a newer kernel took its place (or the server began to stop)
            await call(scheduler.release, lease.id, reason="request cancelled while granted")
            raise WaitCancelled(f"the kernel stopped waiting for devices: {wait.why}")
        simulated = " (simulated)" if scheduler.inventory.simulated else ""
        self.log.info(
            "Kernel %s leased %s%s: %s", self.kernel_id, lease.id, simulated, ", ".join(lease.bdfs)
        )
        return lease

    async def _release(self, reason: str, crash: str | None = None) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        self._let_go_of_caches()
        if await call((await self.scheduler()).release, lease.id, reason=reason, crash=crash):
            self.log.info("Kernel %s released %s (%s)", self.kernel_id, lease.id, reason)
