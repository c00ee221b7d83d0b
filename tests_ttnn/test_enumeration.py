"""ttnn sees exactly the devices a lease of our scheduler holds.

The host is a stand-in on both sides: a generated tt-kmd sysfs tree for our scheduler, and a mock
cluster descriptor with the same cards and PCI addresses for ttnn (``TT_METAL_MOCK_CLUSTER_DESC_PATH``,
ttnn's own mock cluster mode). ``TT_VISIBLE_DEVICES`` comes from a real lease, built the way
``tt-provisioner`` builds a kernel's environment; a fresh process then counts what ttnn enumerates.
"""

import json
import os
import subprocess
import sys

import mock_cluster
import pytest

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.scheduler import Scheduler
from tests.support.sysfs_tree import make_host

COUNT = "import json, ttnn; print('COUNT', json.dumps([ttnn.GetNumAvailableDevices(), ttnn.GetNumPCIeDevices()]))"


def ttnn_sees(descriptor, visible: str | None) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "TT_VISIBLE_DEVICES"}
    env["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = str(descriptor)
    if visible is not None:
        env["TT_VISIBLE_DEVICES"] = visible
    out = subprocess.run([sys.executable, "-c", COUNT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("COUNT "))  # ttnn prints too
    chips, pcie = json.loads(line[len("COUNT ") :])
    return chips, pcie


@pytest.mark.parametrize(
    "host, card_type, count",
    [("n150", "n150", 1), ("n300", "n300", 1), ("loudbox", "n300", 1), ("loudbox", "n300", 2), ("loudbox", "n300", 4)],
)
def test_ttnn_enumerates_exactly_the_leased_cards(tmp_path, host, card_type, count, report):
    tree = make_host(tmp_path / "host", host)
    cards = [(c.card_type, tree.bdf(i)) for i, c in enumerate(tree.cards)]
    descriptor = mock_cluster.write(tmp_path / "cluster.yaml", cards)
    all_chips = sum(mock_cluster.CHIPS[kind] for kind, _ in cards)
    assert ttnn_sees(descriptor, None) == (all_chips, len(cards))  # the whole host, before any lease

    scheduler = Scheduler(SysfsInventory(str(tree.root)), str(tmp_path / "state"), user="alice")
    lease = scheduler.acquire(count, card_type)
    try:
        visible = ",".join(lease.bdfs)  # what tt-provisioner puts in the kernel's environment
        chips, pcie = ttnn_sees(descriptor, visible)
        report(f"mock cluster {host}: lease of {count} {card_type} ({visible}) -> ttnn sees {chips} chips on {pcie} PCIe devices")
        assert (chips, pcie) == (count * mock_cluster.CHIPS[card_type], count)
    finally:
        scheduler.release(lease.id)


@pytest.mark.xfail(
    strict=True,
    reason="ttnn 0.81.1 (mock cluster mode) treats an empty TT_VISIBLE_DEVICES as 'every device', not 'none': "
    "a kernel without a lease is not fenced off by the variable alone (tt-umd's own reading of an empty value is 'none')",
)
def test_an_empty_lease_shows_ttnn_no_device(tmp_path):
    tree = make_host(tmp_path / "host", "n300")
    descriptor = mock_cluster.write(tmp_path / "cluster.yaml", [("n300", tree.bdf(0))])
    assert ttnn_sees(descriptor, "") == (0, 0)
