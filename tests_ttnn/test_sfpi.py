"""SFPI found where the real ttnn looks for it, and ``jupyter tt doctor``'s probe of the real ttnn wheel.

The ttnn wheel ships no SFPI compiler; without one its first device open fails inside tt-metal's JIT
build. Here ttnn's own message (mock cluster mode, no card) is compared with where
``jupyter_tt.devices.sfpi`` looks, and ``open_mesh_device()`` must stop before ttnn with the fix.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ttnn

import jupyter_tt
from jupyter_tt.devices import SysfsInventory
from jupyter_tt.devices.sfpi import find_sfpi, installed_ttnn_sfpi
from jupyter_tt.doctor import probe_ttnn
from jupyter_tt.errors import TTError
from jupyter_tt.scheduler import Scheduler
from jupyter_tt.text import strip_control
from tests.support.sysfs_tree import make_host

TTNN_DIR = Path(ttnn.__file__).resolve().parent
no_sfpi_here = pytest.mark.skipif(find_sfpi(TTNN_DIR).found is not None, reason="SFPI is installed on this host")


def test_doctors_probe_reads_the_real_wheel_its_version_and_the_umd_inside_it():
    probe = probe_ttnn(sys.executable)
    assert probe.error is None, probe.error
    assert probe.version == importlib.metadata.version("ttnn") and Path(probe.package_dir) == TTNN_DIR
    assert (TTNN_DIR / f"build/lib/libtt-umd.so.{probe.umd_version}").exists()
    assert find_sfpi(TTNN_DIR).pinned == re.search(r"sfpi_version='([^']+)'", (TTNN_DIR / "tt_metal/sfpi-version").read_text())[1]


@no_sfpi_here
def test_sfpi_is_looked_for_in_the_two_places_ttnn_itself_names_when_it_fails():
    opened = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import ttnn
        try:
            ttnn.open_device(device_id=0)
        except Exception as e:
            print("ERROR", str(e))
    """)], capture_output=True, text=True, timeout=300)  # conftest's mock cluster (an n150) is in the environment
    # tt-metal's logger colours its lines where it thinks a terminal may be (CI): read the plain text
    match = re.search(r"sfpi not found at (\S+) or (\S+)", strip_control(opened.stdout))
    assert match, opened.stdout[-2000:] + opened.stderr[-2000:]
    assert find_sfpi(TTNN_DIR).roots == (match[1], match[2])


@no_sfpi_here
def test_open_mesh_device_stops_before_ttnn_with_the_sfpi_to_install(tmp_path, monkeypatch):
    tree = make_host(tmp_path / "root", "n150")
    lease = Scheduler(SysfsInventory(str(tree.root)), tmp_path / "state", user="alice").acquire(1)
    for name, value in {"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root),
                        "JUPYTER_TT_STATE_DIR": str(tmp_path / "state"), "JUPYTER_TT_SCHEDULER": "personal",
                        "JUPYTER_TT_LEASE": lease.id}.items():
        monkeypatch.setenv(name, value)
    called = []
    monkeypatch.setattr(ttnn, "open_mesh_device", lambda *a, **k: called.append(a))
    pinned = installed_ttnn_sfpi().pinned
    with pytest.raises(TTError, match=rf"sfpi not found at {re.escape(str(TTNN_DIR))}/runtime/sfpi or .*install SFPI {pinned}"):
        jupyter_tt.open_mesh_device()
    assert called == []
