"""Inside a kernel: jupyter_tt.lease() and open_mesh_device(), in real kernels started by jupyter_client."""

import json

import pytest

import jupyter_tt
from jupyter_tt.devices import SysfsInventory
from jupyter_tt.errors import LeaseError, TTError
from jupyter_tt.kernels.mesh import mesh_plans, mesh_shape
from jupyter_tt.scheduler import Scheduler, open_scheduler
from tests.support.kernels import run
from tests.support.sysfs_tree import make_host

pytestmark = pytest.mark.usefixtures("kernelspecs")


def test_lease_inside_the_kernel_describes_its_devices(kernels):
    km, client = kernels("tt-loudbox")
    out, displays, error = run(client, "import jupyter_tt, json; lease = jupyter_tt.lease(); print(json.dumps(lease.to_json())); lease")
    assert error is None, error
    lease = json.loads(out)
    assert lease["card_types"] == ["n300"] and lease["chips"] == 8 and lease["mesh_shape"] == [1, 8]
    assert lease["simulated"] is True and lease["active"] is True
    assert lease["id"] == km.provisioner.lease.id
    # Every runner opens a LoudBox as tt_transformers and vllm-tt-plugin do: one row of 8, 1-D fabric, "T3K".
    assert set(lease["meshes"]) == {"open_mesh_device()", "jupyter-tt", "tt-transformers", "vllm"}
    for runner, plan in lease["meshes"].items():
        assert (plan["shape"], plan["fabric"], plan["mesh_device"]) == ([1, 8], "FABRIC_1D", "T3K"), runner
    assert lease["meshes"]["vllm"]["opened_by"] == "vllm-tt-plugin"
    html = displays[-1]["text/html"]
    assert "SIMULATED" in html and lease["id"] in html and "mesh 1×8, fabric FABRIC_1D, MESH_DEVICE=T3K" in html
    assert "<code>tt-transformers</code></td><td>1×8</td><td>FABRIC_1D</td>" in html


def test_open_mesh_device_on_a_simulated_lease_says_why_and_what_to_do(kernels):
    _, client = kernels("tt-n300")
    _, _, error = run(client, "import jupyter_tt; jupyter_tt.open_mesh_device()")
    assert error["ename"] == "LeaseError"
    assert "simulated inventory: there is no Wormhole device to open" in error["evalue"]
    assert "torch backend" in error["evalue"]


def test_lease_in_a_kernel_without_devices_says_how_to_get_some(kernels):
    _, client = kernels("tt-none")
    out, _, error = run(client, "import os; print(repr(os.environ['TT_VISIBLE_DEVICES'])); import jupyter_tt; jupyter_tt.lease()")
    assert out.strip() == "''"
    assert error["ename"] == "LeaseError" and "jupyter tt kernelspec install" in error["evalue"]


def test_shutting_down_a_jupyter_client_kernel_frees_its_lease(kernels, state_dir):
    km, client = kernels("tt-n300")
    lease_id = km.provisioner.lease.id
    client.stop_channels()
    km.shutdown_kernel(now=True)
    scheduler = open_scheduler(km.provisioner.settings)
    assert scheduler.get_lease(lease_id) is None
    assert scheduler.history()[0]["end_reason"] == "kernel shut down"


@pytest.mark.parametrize("card_type, cards, shape, fabric, name", [
    ("n150", 1, (1, 1), None, "N150"), ("n300", 1, (1, 2), "FABRIC_1D", "N300"), ("n150", 4, (1, 4), "FABRIC_1D", "N150x4"),
    ("n300", 2, (1, 4), "FABRIC_1D", "(1, 4)"), ("n300", 4, (1, 8), "FABRIC_1D", "T3K"),
])
def test_a_lease_opens_as_one_row_of_its_chips_with_fabric_only_when_there_are_several(card_type, cards, shape, fabric,
                                                                                       name):
    chips = cards * (2 if card_type == "n300" else 1)
    assert mesh_shape(card_type, chips) == shape
    plans = mesh_plans(card_type, cards, chips)
    assert {(p.shape, p.fabric, p.mesh_device) for p in plans.values()} == {(shape, fabric, name)}


def test_open_mesh_device_without_ttnn_says_how_to_install_it(tmp_path, state_dir, monkeypatch):
    tree = make_host(tmp_path, "n300")
    lease = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice").acquire(1)
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "sysfs")
    monkeypatch.setenv("JUPYTER_TT_SYSFS_ROOT", str(tree.root))
    monkeypatch.setenv("JUPYTER_TT_LEASE", lease.id)
    assert jupyter_tt.lease().simulated is False
    with pytest.raises(TTError, match="ttnn is not installed.*pip install ttnn"):
        jupyter_tt.open_mesh_device()


def test_lease_of_an_ended_lease_shows_why_it_ended(tmp_path, state_dir, monkeypatch):
    tree = make_host(tmp_path, "n150")
    scheduler = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice")
    lease = scheduler.acquire(1)
    scheduler.release(lease.id, reason="released by an admin")
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "sysfs")
    monkeypatch.setenv("JUPYTER_TT_SYSFS_ROOT", str(tree.root))
    monkeypatch.setenv("JUPYTER_TT_LEASE", lease.id)
    ended = jupyter_tt.lease()
    assert not ended.active and "released by an admin" in repr(ended)
    with pytest.raises(LeaseError, match="has ended"):
        jupyter_tt.open_mesh_device()


def test_serve_picks_ttnn_on_a_lease_of_real_cards_and_the_cpu_everywhere_else(tmp_path, state_dir, monkeypatch):
    """STAND-IN: a sysfs tree in a temp dir is the card host."""
    from jupyter_tt.serving.notebook import auto_backend

    monkeypatch.delenv("JUPYTER_TT_LEASE", raising=False)
    assert auto_backend() == "torch"  # no lease
    tree = make_host(tmp_path, "n300")
    scheduler = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice")
    held = scheduler.acquire(1)
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "sysfs")
    monkeypatch.setenv("JUPYTER_TT_SYSFS_ROOT", str(tree.root))
    monkeypatch.setenv("JUPYTER_TT_LEASE", held.id)
    assert auto_backend() == "ttnn"
    scheduler.release(held.id, reason="released by an admin")
    assert auto_backend() == "torch"  # an ended lease: nothing to run on


def test_serve_picks_the_cpu_on_a_simulated_lease(kernels):
    _, client = kernels("tt-n300")
    assert run(client, "from jupyter_tt.serving.notebook import auto_backend; print(auto_backend())") == ("torch\n", [], None)


def test_the_notebook_api_shows_its_own_signatures_and_docstrings():
    """What Shift-Tab shows in a notebook: the objects themselves, not wrappers."""
    import inspect

    assert list(inspect.signature(jupyter_tt.serve).parameters)[:3] == ["model", "backend", "engine"]
    assert inspect.signature(jupyter_tt.serve).parameters["backend"].default is None
    assert "ttnn" in jupyter_tt.serve.__doc__ and "llm.backend" in jupyter_tt.serve.__doc__
    widget = jupyter_tt.BenchmarkWidget
    assert "scenario" in inspect.signature(widget).parameters
    assert widget.__doc__ and widget.__doc__.startswith("``jupyter tt bench`` in a notebook")
    for call in (jupyter_tt.lease, jupyter_tt.open_mesh_device, jupyter_tt.close_mesh_device):
        assert call.__module__ == "jupyter_tt.kernels.current" and call.__doc__
