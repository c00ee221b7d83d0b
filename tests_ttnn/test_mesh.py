"""Opening a lease's mesh as the vendor does (``kernels/mesh.py``), on the real ttnn 0.81.1 in mock
cluster mode, with the calls recorded (``recording.py``): no fabric for one chip; ``FABRIC_1D`` before
a multi-chip open and ``DISABLED`` after the close; a failed open leaves the fabric disabled.

Each lease shape runs in a fresh process with a mock cluster of its own cards (ttnn builds its
cluster once per process). The real open fails here as it does on any host without the SFPI
compiler (ttnn's "sfpi not found"), or, for a LoudBox, where our mock descriptor lacks the Ethernet
links between its cards; the path after a successful open uses a stand-in mesh and is
labelled so. On a card host ``make test-wormhole`` opens real meshes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mock_cluster
import pytest

from jupyter_tt.kernels.mesh import Runner, mesh_plans
from jupyter_tt.serving.engines import TTDevices

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent("""
    import json, sys
    import ttnn
    from recording import RecordingTTNN
    from jupyter_tt.kernels.mesh import Runner, close_mesh, mesh_plans, open_mesh

    card_type, cards, chips, opens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    tt = RecordingTTNN(opens=opens)
    plan = mesh_plans(card_type, cards, chips)[Runner.JUPYTER_TT]
    result = {"error": None}
    try:
        mesh = open_mesh(tt, plan, trace_region_size=64 << 20)
        result["fabric_while_open"] = ttnn.get_fabric_config().name
        close_mesh(tt, mesh, plan)
    except Exception as e:
        result["error"] = str(e).splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3])
    result["fabric_after"] = ttnn.get_fabric_config().name
    result["calls"] = tt.calls
    print("RESULT " + json.dumps(result))
""")

LEASES = [("n150", 1), ("n300", 1), ("n300", 4)]


def opened(tmp_path, card_type, cards, opens):
    chips = cards * mock_cluster.CHIPS[card_type]
    descriptor = mock_cluster.write(tmp_path / "cluster.yaml", [(card_type, f"0000:0{4 + i}:00.0") for i in range(cards)])
    env = {**os.environ, "TT_METAL_MOCK_CLUSTER_DESC_PATH": str(descriptor), "PYTHONPATH": str(HERE)}
    env.pop("TT_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, card_type, str(cards), str(chips), "1" if opens else "0"],
                         env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), chips


@pytest.mark.parametrize("card_type, cards", LEASES)
def test_a_mesh_opens_with_fabric_only_for_several_chips_and_closes_with_it_disabled(tmp_path, card_type, cards, report):
    result, chips = opened(tmp_path, card_type, cards, opens=True)  # the open answered by a stand-in mesh
    calls = [(c["call"], c["args"]) for c in result["calls"]]
    shape = f"MeshShape(1, {chips})"
    if chips == 1:  # no fabric on one chip: enabling it on a 1x1 mesh hangs (tt-metal #55519)
        assert calls == [("open_mesh_device", [shape]), ("close_mesh_device", ["StandInMesh"])]
        assert result["fabric_while_open"] == result["fabric_after"] == "DISABLED"
    else:
        assert calls == [("set_fabric_config", ["FABRIC_1D", "STRICT_INIT"]), ("open_mesh_device", [shape]),
                         ("close_mesh_device", ["StandInMesh"]), ("set_fabric_config", ["DISABLED"])]
        assert result["calls"][1]["fabric_before"] == "FABRIC_1D"  # the real ttnn's fabric, set before the open
        assert result["fabric_while_open"] == "FABRIC_1D" and result["fabric_after"] == "DISABLED"
    assert result["calls"][-2 if chips > 1 else 0]["kwargs"] in (["trace_region_size"], [])
    report(f"mesh {card_type}x{cards} (open answered by a stand-in mesh): {' -> '.join(c for c, _ in calls)}")


@pytest.mark.parametrize("card_type, cards", LEASES)
def test_a_failed_open_leaves_the_fabric_disabled(tmp_path, card_type, cards, report):
    result, chips = opened(tmp_path, card_type, cards, opens=False)  # the real open, which fails here
    # ttnn's own refusal: "sfpi not found" (no SFPI compiler here), or for the LoudBox the mock descriptor's
    # topology (its cards have no Ethernet links between them, so the system mesh is smaller than 1x8).
    assert result["error"] and result["error"].startswith(("TT_THROW", "TT_FATAL")), result
    calls = [c["call"] for c in result["calls"]]
    assert calls == (["open_mesh_device"] if chips == 1 else ["set_fabric_config", "open_mesh_device", "set_fabric_config"])
    assert result["fabric_after"] == "DISABLED"
    report(f"mesh {card_type}x{cards}, real open failed ({result['error'][:60]}...): fabric after: {result['fabric_after']}")


@pytest.mark.parametrize("card_type, cards", [("n300", 1), ("n300", 2), ("n300", 4), ("n150", 2)])
def test_the_visible_devices_vllm_gets_show_ttnn_every_chip_of_the_lease(tmp_path, card_type, cards, report):
    """vllm-tt-plugin counts TT_VISIBLE_DEVICES entries as chips, so each card is listed once per chip; the
    UMD inside ttnn opens each card once however often it is listed, with all its chips."""
    chips = cards * mock_cluster.CHIPS[card_type]
    host = [(card_type, f"0000:0{4 + i}:00.0") for i in range(4)]  # the lease is part of a bigger host
    descriptor = mock_cluster.write(tmp_path / "cluster.yaml", host)
    devices = TTDevices(devices=tuple((bdf, mock_cluster.CHIPS[kind]) for kind, bdf in host[:cards]), card_type=card_type,
                        mesh=mesh_plans(card_type, cards, chips)[Runner.VLLM])
    env = {**os.environ, "TT_METAL_MOCK_CLUSTER_DESC_PATH": str(descriptor), "TT_VISIBLE_DEVICES": devices.visible_devices}
    out = subprocess.run([sys.executable, "-c", "import ttnn; print('N', ttnn.get_num_devices())"], env=env,
                         capture_output=True, text=True, timeout=120)
    seen = int(next(x for x in out.stdout.splitlines() if x.startswith("N "))[2:])
    assert len(devices.visible_devices.split(",")) == chips == seen
    report(f"TT_VISIBLE_DEVICES for vLLM on {cards}x {card_type}: {chips} entries, ttnn's UMD opens {seen} chips")
