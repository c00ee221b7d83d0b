"""The inventory's last reading, shared by the threads that need it.

Reading a host's cards is about eighty small sysfs files and, for holders outside the scheduler, a
walk of ``/proc/*/fd``. Each of those system calls lets go of the GIL, and taking it back waits for
whichever thread holds it: in the scheduler service, a report read while another user's large report
runs in the next thread took ten times as long as alone. So the service's threads share one reading:
one thread reads the cards at a time (the inventory keeps health memory across readings), a caller
that may use a reading up to ``max_age`` seconds old takes the last one, and a caller that may not
wait takes the last one while another thread reads (kubelet's device manager hands out the devices
its plugins last reported in the same way, rather than asking the plugin on every allocation).
"""

from __future__ import annotations

import threading
import time

from .base import Device, InventoryBackend


class InventorySample:
    """The last ``inventory.devices()`` and when it was read (``time.monotonic``)."""

    def __init__(self, inventory: InventoryBackend):
        self.inventory = inventory
        self._lock = threading.Lock()
        self.when = float("-inf")  # when the last reading began
        self.devices: list[Device] = []

    def get(self, max_age: float = 0.0, *, wait: bool = True) -> list[Device]:
        """A reading begun at most ``max_age`` seconds ago (0: begun after this call). With ``wait=False``,
        while another thread reads, the last reading, however old (there must be one)."""
        asked = time.monotonic()
        if max_age > 0 and asked - self.when <= max_age:
            return self.devices
        if not self._lock.acquire(blocking=wait or self.when == float("-inf")):
            return self.devices  # another thread is reading the cards right now
        try:
            if self.when >= asked - max_age:  # read while this call waited for the lock: as fresh as asked
                return self.devices
            began = time.monotonic()
            devices = self.inventory.devices()
            self.when, self.devices = began, devices
            return devices
        finally:
            self._lock.release()
