"""`jupyter tt` on the command line, run as users run it: a subprocess."""

import json
import os
import signal
import subprocess
import sys

import pytest

from jupyter_tt.devices import SimulatedInventory, SysfsInventory
from jupyter_tt.scheduler import Scheduler
from tests.support.sysfs_tree import Card, make_host


def jupyter_tt(*args, env=None):
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "jupyter"), "tt", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60
    )


def test_devices_prints_a_table_labelled_simulated(state_dir):
    Scheduler(SimulatedInventory("n150x1,n300x2"), state_dir, user="alice").acquire(1, "n150")
    done = jupyter_tt("devices", env={"JUPYTER_TT_INVENTORY": "simulated:n150x1,n300x2"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Inventory: SIMULATED inventory (n150x1,n300x2): no real card"
    header = next(i for i, line in enumerate(lines) if line.startswith("ID"))
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [r[1] for r in rows] == ["n150", "n300", "n300"]
    assert rows[0][4:7] == ["leased", "[sim]", "alice"]
    assert [r[4:6] for r in rows[1:]] == [["free", "[sim]"], ["free", "[sim]"]]


def test_devices_json_is_the_api_document(tmp_path):
    tree = make_host(tmp_path, "loudbox")
    done = jupyter_tt("devices", "--json", env={"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root)})
    report = json.loads(done.stdout)
    assert report["inventory"]["kind"] == "sysfs" and report["inventory"]["simulated"] is False
    assert [(d["id"], d["card_type"], d["state"]) for d in report["devices"]] == [(i, "n300", "free") for i in range(4)]


def test_devices_reports_unhealthy_devices_and_unaccounted_processes(tmp_path):
    stray = int(subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True).stdout)
    try:
        tree = make_host(tmp_path, [Card(card_type="n150", temperature_c=97.0), Card(card_type="n300", holders=[stray])])
        done = jupyter_tt("devices", env={"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root)})
        assert "device 0: temperature 97.0 °C is above its max 90.0 °C" in done.stdout
        assert f"device 1: pid {stray} sleep" in done.stdout
    finally:
        os.kill(stray, signal.SIGKILL)


def test_devices_says_why_a_card_is_resetting_and_what_it_waits_for(tmp_path, state_dir):
    tree = make_host(tmp_path, [Card(card_type="n300")])
    scheduler = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="root", reset_after_crash=True)
    lease = scheduler.acquire(1)
    tree.set(0, holders=[os.getpid()])  # the lease's process opens the node
    scheduler.release(lease.id, reason="kernel died and the restart limit was reached", crash="kernel process 4242 was killed by SIGKILL")
    scheduler.run_resets()  # this process holds the node: the reset waits
    done = jupyter_tt("devices", env={"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root)})
    assert done.returncode == 0, done.stderr
    assert f"device 0: after kernel process 4242 was killed by SIGKILL; waits: process {os.getpid()} holds its node" in done.stdout


def test_devices_shows_stored_text_escaped_never_interpreted_by_the_terminal(tmp_path, state_dir):
    tree = make_host(tmp_path, [Card(card_type="n300")])
    scheduler = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="root", reset_after_crash=True)
    lease = scheduler.acquire(1)
    scheduler.release(lease.id, reason="bye", crash="killed")
    # A row from before labels were cleaned on the way in: an escape that clears the screen and retitles it.
    scheduler.db.execute("UPDATE resets SET reason=?", ("\x1b[2J\x1b]0;pwned\x07killed",))
    done = jupyter_tt("devices", env={"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(tree.root)})
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "after \\x1b[2J\\x1b]0;pwned\\x07killed" in done.stdout


def test_kernelspec_install_writes_a_tt_provisioner_spec(tmp_path):
    done = jupyter_tt("kernelspec", "install", "--prefix", str(tmp_path), "--name", "tt-n300", "--devices", "1", "--card-type", "n300", "--wait-timeout", "30")
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/tt-n300/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "tt-provisioner",
        "config": {"devices": 1, "card_type": "n300", "wait_timeout": 30.0},
    }
    assert spec["display_name"] == "Python 3 (1× n300, 2 chips)"
    assert os.path.samefile(spec["argv"][0], sys.executable)


def test_kernelspec_install_with_an_unknown_card_type_fails_clearly(tmp_path):
    done = jupyter_tt("kernelspec", "install", "--prefix", str(tmp_path), "--name", "x", "--card-type", "n400")
    assert done.returncode == 2
    assert "unknown card type 'n400': ask for one of n150, n300" in done.stderr
    assert not (tmp_path / "share/jupyter/kernels/x").exists()


def test_usage_and_release_act_for_the_current_user_only(state_dir):
    env = {"JUPYTER_TT_INVENTORY": "simulated:n300x4", "JUPYTERHUB_USER": "alice"}
    mine = Scheduler(SimulatedInventory("n300x4"), state_dir, user="alice").acquire(2)
    theirs = Scheduler(SimulatedInventory("n300x4"), state_dir, user="bob").acquire(1)
    refused = jupyter_tt("release", theirs.id, env=env)
    assert refused.returncode == 2 and "belongs to bob" in refused.stderr
    assert jupyter_tt("release", mine.id, env=env).returncode == 0
    usage = json.loads(jupyter_tt("usage", "--json", env=env).stdout)
    assert {u["user"]: u["leases"] for u in usage} == {"alice": 1, "bob": 1}


def test_bad_inventory_setting_is_a_clear_error():
    done = jupyter_tt("devices", env={"JUPYTER_TT_INVENTORY": "simulated:n300x0"})
    assert done.returncode == 2
    assert "holds 1 to 4096 cards" in done.stderr and "Traceback" not in done.stderr


def test_serve_on_the_ttnn_backend_says_what_is_missing(tmp_path):
    """--backend ttnn fails at once, before reading the model, naming what to do: no lease, a simulated
    lease, or (in this lane, which has no ttnn) a lease of real devices on a host without ttnn."""
    state = str(tmp_path / "state")
    base = {"JUPYTER_TT_STATE_DIR": state, "JUPYTER_TT_LEASE": ""}
    none = jupyter_tt("serve", "--backend", "ttnn", env=base)
    assert none.returncode == 2 and "holds no Tenstorrent devices" in none.stderr, none.stderr

    simulated = Scheduler(SimulatedInventory("n150x1"), state, user="alice").acquire(1)
    env = {**base, "JUPYTER_TT_INVENTORY": "simulated:n150x1", "JUPYTER_TT_LEASE": simulated.id}
    done = jupyter_tt("serve", "--backend", "ttnn", env=env)
    assert done.returncode == 2 and "simulated inventory" in done.stderr and "backend='torch'" in done.stderr, done.stderr

    host = make_host(tmp_path / "host", "n150")  # a driver stand-in: to jupyter-tt, a real n150
    from jupyter_tt.devices import SysfsInventory

    real = Scheduler(SysfsInventory(str(host.root)), str(tmp_path / "state2"), user="alice").acquire(1)
    env = {"JUPYTER_TT_STATE_DIR": str(tmp_path / "state2"), "JUPYTER_TT_INVENTORY": "sysfs",
           "JUPYTER_TT_SYSFS_ROOT": str(host.root), "JUPYTER_TT_LEASE": real.id}
    done = jupyter_tt("serve", "--backend", "ttnn", env=env)
    assert done.returncode == 2 and "ttnn is not installed" in done.stderr and "pip install ttnn" in done.stderr, done.stderr

    bad = jupyter_tt("serve", "--backend", "ttnn", "--weights", "int8", env=env)
    assert bad.returncode == 2 and "not one of the ttnn backend's formats: use accuracy or performance" in bad.stderr, bad.stderr
    for done in (none, bad):
        assert "Traceback" not in done.stderr


def test_the_tt_transformers_adapter_says_where_to_get_it():
    """tt-metal's models.tt_transformers is not on PyPI (nor here): asking for it names what to install."""
    import pytest

    from jupyter_tt.errors import TTError
    from jupyter_tt.serving.backends.ttnn.tt_transformers import TTTransformersRunner

    with pytest.raises(TTError, match="tt-metal's models.tt_transformers.*--ttnn-impl jupyter-tt"):
        TTTransformersRunner.check_available()


def test_run_gives_the_command_its_devices_and_ends_the_lease_when_it_exits(state_dir, tmp_path):
    env = {"JUPYTER_TT_INVENTORY": "simulated:n150x1,n300x2"}
    seen = tmp_path / "during.json"
    done = jupyter_tt("run", "--devices", "2", "--card-type", "n300", "--",
                      "sh", "-c", f'echo "$TT_VISIBLE_DEVICES $JUPYTER_TT_LEASE"; jupyter tt devices --json > {seen}; exit 3',
                      env={**env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert done.returncode == 3, done.stderr  # the command's own status
    visible, lease_id = done.stdout.split()
    during = json.loads(seen.read_text())
    [lease] = during["leases"]
    assert lease["id"] == lease_id and visible == ",".join(lease["bdfs"]) and len(lease["bdfs"]) == 2
    after = Scheduler(SimulatedInventory("n150x1,n300x2"), state_dir, user="alice")
    assert after.leases() == []
    assert "exited with 3" in after.history()[0]["end_reason"]


def test_run_waits_in_the_queue_and_says_where(state_dir):
    inventory = SimulatedInventory("n300x1")
    held = Scheduler(inventory, state_dir, user="alice").acquire(1)
    done = jupyter_tt("run", "--timeout", "1", "--", "true", env={"JUPYTER_TT_INVENTORY": "simulated:n300x1"})
    assert done.returncode == 2
    assert "position 1 in the queue" in done.stderr and "1 device" in done.stderr, done.stderr
    assert held.id in [lease.id for lease in Scheduler(inventory, state_dir, user="alice").leases()]


def test_run_keeps_the_lease_while_the_command_lives_even_when_run_itself_is_killed(state_dir, tmp_path):
    from tests.support.jupyter_servers import wait_until

    scheduler = Scheduler(SimulatedInventory("n300x1"), state_dir, user="alice")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "jupyter"), "tt", "run", "--",
                             sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                            env={**os.environ, "JUPYTER_TT_INVENTORY": "simulated:n300x1"}, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        proc.kill()
        proc.wait()
        scheduler.reconcile()
        [lease] = scheduler.leases()
        assert lease.pid == child  # the lease follows the command
    finally:
        os.kill(child, signal.SIGKILL)

    def ended():
        scheduler.reconcile()
        return scheduler.leases() == []

    wait_until(ended, timeout=10, message="the lease to end with the command")


def test_run_without_a_command_says_how_to_give_one():
    done = jupyter_tt("run", "--devices", "1")
    assert done.returncode == 2 and "give the command after --" in done.stderr


def test_a_device_plugins_tt_visible_devices_is_the_set_the_cli_shows_and_leases_from(tmp_path):
    """A pod given cards 1 and 3 of a LoudBox (TT_VISIBLE_DEVICES from the device plugin): the others are not its."""
    host = make_host(tmp_path / "host", "loudbox")
    env = {"JUPYTER_TT_INVENTORY": "sysfs", "JUPYTER_TT_SYSFS_ROOT": str(host.root), "TT_VISIBLE_DEVICES": "1,3",
           "JUPYTER_TT_STATE_DIR": str(tmp_path / "state")}
    listed = jupyter_tt("devices", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)["devices"]] == [1, 3]
    assert "limited to 1, 3" in jupyter_tt("devices", env=env).stdout
    too_many = jupyter_tt("run", "--devices", "3", "--", "true", env=env)
    assert too_many.returncode == 2 and "Traceback" not in too_many.stderr, too_many.stderr
    both = jupyter_tt("run", "--devices", "2", "--", "sh", "-c", "echo $TT_VISIBLE_DEVICES", env=env)
    assert both.returncode == 0, both.stderr
    assert both.stdout.split() == [f"{host.bdf(1)},{host.bdf(3)}"]


def test_usage_csv_has_one_row_per_lease_with_utc_times_and_hours_held_ones_included(state_dir):
    import csv
    import io
    from datetime import datetime

    scheduler = Scheduler(SimulatedInventory("n150x1,n300x2"), state_dir, user="alice")
    ended = scheduler.acquire(2, "n300")
    scheduler.db.execute("UPDATE leases SET granted_at = granted_at - 5400 WHERE id=?", (ended.id,))  # 1.5 h ago
    scheduler.release(ended.id, reason="kernel shut down")
    held = Scheduler(SimulatedInventory("n150x1,n300x2"), state_dir, user="bob").acquire(1, "n150")
    done = jupyter_tt("usage", "--csv", env={"JUPYTER_TT_INVENTORY": "simulated:n150x1,n300x2"})
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(rows[0]) == ["lease_id", "user", "card_type", "devices", "chips", "granted_at", "ended_at",
                             "end_reason", "device_hours", "chip_hours"]
    first, second = rows
    assert (first["lease_id"], first["user"], first["card_type"], first["chips"]) == (ended.id, "alice", "n300", "4")
    assert first["end_reason"] == "kernel shut down" and len(first["devices"].split()) == 2
    assert float(first["device_hours"]) == pytest.approx(3.0, abs=0.01) and float(first["chip_hours"]) == pytest.approx(6.0, abs=0.02)
    start, end = datetime.fromisoformat(first["granted_at"]), datetime.fromisoformat(first["ended_at"])
    assert start.utcoffset().total_seconds() == 0 and (end - start).total_seconds() == pytest.approx(5400, abs=5)
    assert (second["lease_id"], second["user"], second["ended_at"], second["end_reason"]) == (held.id, "bob", "", "")
    window = jupyter_tt("usage", "--csv", "--days", "0.01", env={"JUPYTER_TT_INVENTORY": "simulated:n150x1,n300x2"})
    counted = {r["lease_id"]: float(r["device_hours"]) for r in csv.DictReader(io.StringIO(window.stdout))}
    assert counted[ended.id] == pytest.approx(2 * 0.24, abs=0.01)  # only the window's 0.24 h of its 1.5 h


def test_ctrl_c_on_serve_stops_it_cleanly_without_a_traceback(tmp_path):
    import httpx

    from tests.support.hang_stacks import dump_stacks
    from tests.support.jupyter_servers import free_port, wait_until

    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "jupyter"), "tt", "serve", "--port",
                                 str(port), "--kv-cache-mb", "64"], stdout=out, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=180, interval=0.5, message="jupyter tt serve to load the model")
        wait_until(lambda: "Serving smollm2" in log.read_text(), timeout=30, message="the engine to start serving")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            assert proc.wait(30) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"jupyter tt serve did not stop within 30 s of Ctrl-C:\n{dump_stacks('a Ctrl-C that hangs')}\n"
                        f"{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "died" not in text, text[-3000:]
    assert text.rstrip().endswith("Stopped (Ctrl-C): requests in flight were aborted"), text[-3000:]


def test_check_without_a_lease_or_on_a_simulated_one_says_why_before_touching_a_card(state_dir):
    out = jupyter_tt("check", env={"JUPYTER_TT_LEASE": ""})
    assert out.returncode == 2 and "jupyter tt check: this kernel holds no Tenstorrent devices" in out.stderr, out.stderr
    held = Scheduler(SimulatedInventory("n300x1"), state_dir, user="alice").acquire(1)
    out = jupyter_tt("check", "--json", env={"JUPYTER_TT_LEASE": held.id, "JUPYTER_TT_INVENTORY": "simulated:n300x1"})
    assert out.returncode == 2 and "simulated inventory: there is no Wormhole device to open" in out.stderr, out.stderr
