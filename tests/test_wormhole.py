"""On a host with Wormhole cards only (skipped elsewhere): the real driver files and ttnn.

Run on such a host:  .venv/bin/python -m pytest -m wormhole tests/test_wormhole.py -v
These have NOT run on a card yet.
"""

import os
import re

import pytest

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.scheduler import Scheduler

pytestmark = [
    pytest.mark.wormhole,
    pytest.mark.skipif(not os.path.isdir("/dev/tenstorrent"), reason="no /dev/tenstorrent: needs a Wormhole card"),
]


def test_real_inventory_reads_every_device_node():
    devices = SysfsInventory("/").devices()
    nodes = sorted(int(n) for n in os.listdir("/dev/tenstorrent") if n.isdigit())
    assert [d.id for d in devices] == nodes
    for device in devices:
        assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", device.bdf), device
        assert device.card_type in ("n150", "n300"), device
        assert device.telemetry.temperature_c is not None and 0 < device.telemetry.temperature_c < 110


def test_a_lease_opens_as_a_ttnn_mesh_of_the_right_shape(tmp_path, monkeypatch):
    ttnn = pytest.importorskip("ttnn")
    from jupyter_tt.kernels.current import close_mesh_device, open_mesh_device

    scheduler = Scheduler(SysfsInventory("/"), str(tmp_path), user="wormhole-test")
    lease = scheduler.acquire(1)
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "sysfs")
    monkeypatch.setenv("JUPYTER_TT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("JUPYTER_TT_LEASE", lease.id)
    mesh = open_mesh_device()
    try:
        assert mesh.get_num_devices() == sum(d.chips for d in lease.devices)
    finally:
        close_mesh_device(mesh)
        scheduler.release(lease.id)
    assert ttnn is not None
