"""``engine="vllm", backend="ttnn"``: Tenstorrent's vLLM (vllm-tt-plugin) on the kernel's lease, as
tt-inference-server starts it. There is no card here, so what is checked is the command line and
environment we build from a lease on a stand-in sysfs tree, read with the plugin's own rule for
the mesh it will open (transcribed below from its source, which names the commit)."""

from __future__ import annotations

import ast
import json
import sys

import pytest

from jupyter_tt.caches import CacheKind
from jupyter_tt.devices import SysfsInventory, open_inventory
from jupyter_tt.errors import LeaseError, TTError
from jupyter_tt.kernels.mesh import Runner, mesh_plans
from jupyter_tt.scheduler import Scheduler
from jupyter_tt.serving.engines import EngineName, TTDevices, external_launch, vllm_launch
from tests.support.sysfs_tree import make_host

# vllm-tt-plugin e3fc849 (2026-08-21), src/vllm_tt_plugin/utils/dp_discovery.py _MESH_GRID_PRESETS and
# parse_mesh_grid, and src/vllm_tt_plugin/worker.py _resolve_mesh_grid (without standard-DP's stored grids).
PLUGIN_PRESETS = {"N150": (1, 1), "P100": (1, 1), "P150": (1, 1), "P150x2": (1, 2), "N300": (1, 2), "P300": (1, 2),
                  "N150x4": (1, 4), "P150x4": (1, 4), "T3K": (1, 8), "P150x8": (1, 8), "P300x2": (1, 4),
                  "TG": (8, 4), "BH-Galaxy": (8, 4)}


def plugin_mesh_grid(mesh_device_env: str | None, num_devices_available: int, visible_devices_env: str | None):
    if mesh_device_env is None:
        grid = (1, num_devices_available)
    else:
        try:
            parsed = ast.literal_eval(mesh_device_env)
            grid = tuple(int(d) for d in parsed)
        except (ValueError, SyntaxError):
            if mesh_device_env not in PLUGIN_PRESETS:
                raise ValueError(f"Invalid MESH_DEVICE: {mesh_device_env}") from None
            grid = PLUGIN_PRESETS[mesh_device_env]
    if visible_devices_env:
        visible_count = len([d for d in visible_devices_env.split(",") if d.strip()])
        if visible_count > 0 and grid[0] * grid[1] != visible_count:
            grid = (1, visible_count)
    return grid


def test_the_transcribed_plugin_rule_gives_what_the_plugins_own_tests_assert():
    # vllm-tt-plugin tests/test_visible_devices.py, at the same commit.
    assert plugin_mesh_grid("TG", 1, "0") == (1, 1)
    assert plugin_mesh_grid("TG", 8, "0,1,2,3,4,5,6,7") == (1, 8)
    assert plugin_mesh_grid("P150x8", 8, "3") == (1, 1)
    assert plugin_mesh_grid("BH-Galaxy", 32, None) == (8, 4)


LEASES = [("n150", 1, "N150"), ("n300", 1, "N300"), ("n300", 2, "(1, 4)"), ("n300", 4, "T3K"), ("n150", 4, "N150x4")]


def launch_for(card_type, cards, model="meta-llama/Llama-3.1-8B-Instruct", engine_args=()):
    chips = cards * (2 if card_type == "n300" else 1)
    plan = mesh_plans(card_type, cards, chips)[Runner.VLLM]
    devices = TTDevices(devices=tuple((f"0000:0{4 + i}:00.0", chips // cards) for i in range(cards)),
                        card_type=card_type, mesh=plan)
    return vllm_launch(model, "llama", 8123, "secret-key", python=sys.executable, devices=devices,
                       engine_args=engine_args, weights_cache="/home/alice/.cache/jupyter-tt/tt-weights/k"), chips


@pytest.mark.parametrize("card_type, cards, mesh_device", LEASES)
def test_the_plugin_opens_every_chip_of_the_lease_in_one_row(card_type, cards, mesh_device):
    launch, chips = launch_for(card_type, cards)
    env = launch.env
    assert env["MESH_DEVICE"] == mesh_device
    # The plugin counts TT_VISIBLE_DEVICES entries as chips; tt-umd opens each card once (tests_ttnn checks that
    # ttnn's own UMD sees `chips` devices for this very list).
    assert plugin_mesh_grid(env["MESH_DEVICE"], chips, env["TT_VISIBLE_DEVICES"]) == (1, chips)
    assert set(env["TT_VISIBLE_DEVICES"].split(",")) == {f"0000:0{4 + i}:00.0" for i in range(cards)}
    assert "VLLM_USE_V1" not in env  # obsolete: vLLM 0.25 has only its v1 engine


@pytest.mark.parametrize("card_type, cards, mesh_device, max_len, trace", [
    ("n150", 1, "N150", 32768, 52_000_000), ("n300", 1, "N300", 131072, 70_000_000),
    ("n300", 4, "T3K", 131072, 117_000_000),
])
def test_llama_8b_gets_tt_inference_servers_context_batch_tokens_and_trace_region_per_device(
        card_type, cards, mesh_device, max_len, trace):
    launch, _ = launch_for(card_type, cards)
    c = launch.command
    assert c[c.index("--max-model-len") + 1] == c[c.index("--max-num-batched-tokens") + 1] == str(max_len)
    assert json.loads(c[c.index("--additional-config") + 1]) == {"tt": {"trace_region_size": trace}}
    assert c[c.index("--max-num-seqs") + 1] == "32" and c[c.index("--block-size") + 1] == "64"
    env = launch.env
    assert (env["VLLM_RPC_TIMEOUT"], env["HF_MODEL"]) == ("900000", "meta-llama/Llama-3.1-8B-Instruct")
    assert env["TT_CACHE_PATH"].startswith("/home/alice/.cache/jupyter-tt/")  # never the model's folder
    # vLLM's own bound on its engine core's start must not cut a cold start on cards short.
    assert float(env["VLLM_ENGINE_READY_TIMEOUT_S"]) >= launch.startup_timeout >= 3600
    assert "secret-key" not in " ".join(c) and env["VLLM_API_KEY"] == "secret-key"


def test_the_users_engine_args_override_the_spec_and_merge_into_its_additional_config():
    launch, _ = launch_for("n300", 1, engine_args=["--max-model-len", "8192", "--max-num-seqs=4",
                                                   "--additional-config", '{"tt": {"trace_mode": "decode_only"}}'])
    c = launch.command
    assert c.count("--max-model-len") == 1 and c[c.index("--max-model-len") + 1] == "8192"
    assert "--max-num-seqs=4" in c and "--max-num-seqs" not in c
    assert c[c.index("--max-num-batched-tokens") + 1] == "131072"
    assert c.count("--additional-config") == 1
    assert json.loads(c[c.index("--additional-config") + 1]) == {
        "tt": {"trace_region_size": 70_000_000, "trace_mode": "decode_only"}}
    with pytest.raises(TTError, match="--additional-config is not JSON"):
        launch_for("n300", 1, engine_args=["--additional-config", "{tt"])


def test_a_model_without_a_spec_gets_the_plugins_defaults_and_no_context_it_may_not_have():
    launch, _ = launch_for("n300", 1, model="/models/SmolLM2-135M-Instruct")
    assert "--max-model-len" not in launch.command and "--additional-config" not in launch.command
    assert launch.env["MESH_DEVICE"] == "N300"


def test_vllm_on_ttnn_runs_on_exactly_the_kernels_lease_and_refuses_one_with_nothing_to_run_on(tmp_path, monkeypatch):
    tree = make_host(tmp_path / "root", "loudbox")  # a stand-in sysfs tree of four n300: no card here
    scheduler = Scheduler(SysfsInventory(str(tree.root)), tmp_path / "state", user="alice")
    scheduler.acquire(1)  # someone else's card, to be left alone
    held = scheduler.acquire(2)
    for name, value in {"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root),
                        "JUPYTER_TT_STATE_DIR": str(tmp_path / "state"), "JUPYTER_TT_SCHEDULER": "personal",
                        "JUPYTER_TT_LEASE": held.id, "JUPYTER_TT_VLLM_PYTHON": sys.executable}.items():
        monkeypatch.setenv(name, value)
    launch = external_launch(EngineName.VLLM, "meta-llama/Llama-3.1-8B-Instruct", "ttnn", 8123, "k")
    assert launch.env["TT_VISIBLE_DEVICES"].split(",") == [b for b in held.bdfs for _ in range(2)]
    assert launch.env["MESH_DEVICE"] == "(1, 4)"
    kind, key, about = launch.cache
    assert kind is CacheKind.TT_WEIGHTS and about == {"model": "meta-llama/Llama-3.1-8B-Instruct", "mesh_device": "(1, 4)"}
    assert launch.env["TT_CACHE_PATH"].endswith(f"/tt-weights/{key}")
    scheduler.release(held.id)
    with pytest.raises(LeaseError, match=f"lease {held.id} has ended"):
        external_launch(EngineName.VLLM, "meta-llama/Llama-3.1-8B-Instruct", "ttnn", 8123, "k")
    simulated = Scheduler(open_inventory("simulated:n300x4"), tmp_path / "simulated", user="alice").acquire(1)
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    monkeypatch.setenv("JUPYTER_TT_STATE_DIR", str(tmp_path / "simulated"))
    monkeypatch.setenv("JUPYTER_TT_LEASE", simulated.id)
    with pytest.raises(LeaseError, match="simulated inventory: there is no Wormhole device to open"):
        external_launch(EngineName.VLLM, "meta-llama/Llama-3.1-8B-Instruct", "ttnn", 8123, "k")
