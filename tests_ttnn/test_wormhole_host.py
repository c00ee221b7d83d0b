"""What vLLM on cards is given, and the readiness check, on a real Wormhole host (skipped where no
/dev/tenstorrent exists).

Run on a host with cards:  make test-wormhole
NOT yet run on a card. vllm-tt-plugin counts TT_VISIBLE_DEVICES entries as chips, so each card is
listed once per chip (``serving/engines.py`` ``TTDevices``); here the real UMD inside ttnn must then
open every chip of the listed cards, and no other card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.kernels.mesh import Runner, mesh_plans
from jupyter_tt.serving.engines import TTDevices

pytestmark = [
    pytest.mark.wormhole,
    pytest.mark.skipif(not Path("/dev/tenstorrent").exists(), reason="no /dev/tenstorrent: needs a Wormhole card"),
]


def test_the_visible_devices_given_to_vllm_open_every_chip_of_each_listed_card(report):
    cards = SysfsInventory("/").devices()
    for count in sorted({1, len(cards)}):
        chosen = cards[:count]
        chips = sum(d.chips for d in chosen)
        devices = TTDevices(devices=tuple((d.bdf, d.chips) for d in chosen), card_type=chosen[0].card_type,
                            mesh=mesh_plans(chosen[0].card_type, count, chips)[Runner.VLLM])
        env = {**os.environ, "TT_VISIBLE_DEVICES": devices.visible_devices}
        env.pop("TT_METAL_MOCK_CLUSTER_DESC_PATH", None)
        out = subprocess.run([sys.executable, "-c", "import ttnn; print('N', ttnn.get_num_devices())"], env=env,
                             capture_output=True, text=True, timeout=300)
        seen = int(next(x for x in out.stdout.splitlines() if x.startswith("N "))[2:])
        report(f"Wormhole: {count} card(s) listed as {devices.visible_devices}: ttnn opens {seen} chips (expected {chips})")
        assert seen == chips == len(devices.visible_devices.split(","))


def test_the_readiness_check_passes_on_a_lease_of_one_card_with_its_traces_replaying_identically(report):
    """`jupyter tt check` under `jupyter tt run`, as an administrator runs it after setting up a host."""
    command = [sys.executable, "-m", "jupyter_tt.cli", "run", "--devices", "1", "--",
               sys.executable, "-m", "jupyter_tt.cli", "check", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "TT_METAL_MOCK_CLUSTER_DESC_PATH"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    result = json.loads(done.stdout[done.stdout.index("{"):])
    for r in result["results"]:
        report(f"Wormhole: check {r['shape']} ({r['rows']} rows): PCC {r['pcc']:.5f}, replays identical "
               f"{r['replays_identical']}")
    assert done.returncode == 0 and result["ok"], done.stderr[-2000:]
    assert all(r["replays_identical"] is True for r in result["results"])
