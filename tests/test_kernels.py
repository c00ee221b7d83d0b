"""Kernels through tt-provisioner in real Jupyter servers: every way a kernel ends frees its devices."""

import os
import signal
import threading

import pytest

from tests.support.jupyter_servers import kernel_environ, pid_gone, wait_until

pytestmark = pytest.mark.usefixtures("kernelspecs")


def test_kernel_gets_its_leased_devices_and_shutdown_frees_them(servers):
    server = servers()
    kernel_id = server.start_kernel("tt-n300")
    lease = server.lease_of(kernel_id)
    env = _exec_environ(lease["pid"], lease["id"])
    devices = {d["id"]: d for d in server.json("/jupyter-tt/api/devices")["devices"]}
    assert env["TT_VISIBLE_DEVICES"] == ",".join(devices[i]["bdf"] for i in lease["devices"])
    assert env["JUPYTER_TT_LEASE"] == lease["id"]
    assert [devices[i]["state"] for i in lease["devices"]] == ["leased"]
    assert devices[lease["devices"][0]]["kernel_id"] == kernel_id

    server.shutdown_kernel(kernel_id)
    assert server.leases() == []
    assert {d["state"] for d in server.json("/jupyter-tt/api/devices")["devices"]} == {"free"}


def test_loudbox_kernel_holds_all_four_n300_as_eight_chips(servers):
    server = servers()
    lease = server.lease_of(server.start_kernel("tt-loudbox"))
    assert lease["devices"] == [0, 1, 2, 3] and lease["chips"] == 8
    assert len(_exec_environ(lease["pid"], lease["id"])["TT_VISIBLE_DEVICES"].split(",")) == 4


def test_kernels_without_a_lease_see_no_device(servers):
    server = servers(env={"TT_VISIBLE_DEVICES": "0000:04:00.0"})  # whatever the server inherited
    for name in ("python3", "tt-none"):
        kernel_id = server.start_kernel(name)
        env = kernel_environ(wait_until(lambda kernel_id=kernel_id: _kernel_pid(kernel_id)))
        assert env["TT_VISIBLE_DEVICES"] == ""
        assert "JUPYTER_TT_LEASE" not in env
    assert server.leases() == []


def _exec_environ(pid, lease_id):
    """The environment of a just-spawned kernel, once it has exec'd (before that /proc shows the parent's)."""
    return wait_until(lambda: (env := kernel_environ(pid)).get("JUPYTER_TT_LEASE") == lease_id and env,
                      message=f"kernel {pid} to start with lease {lease_id}")


def _kernel_pid(kernel_id):
    """The PID of a kernel that holds no lease: its command line names its connection file."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if kernel_id in cmdline:
            return proc.pid
    return None


def test_restart_keeps_the_same_devices(servers):
    server = servers()
    kernel_id = server.start_kernel("tt-n300")
    before = server.lease_of(kernel_id)
    assert server.http.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
    after = wait_until(lambda: (lease := server.lease_of(kernel_id)) and lease["pid"] != before["pid"] and lease)
    assert (after["id"], after["devices"]) == (before["id"], before["devices"])
    env = _exec_environ(after["pid"], before["id"])
    assert env["TT_VISIBLE_DEVICES"] == ",".join(before["bdfs"])


def test_a_kernel_killed_with_sigkill_is_restarted_on_the_same_devices(servers):
    server = servers()
    kernel_id = server.start_kernel("tt-n300")
    before = server.lease_of(kernel_id)
    bdfs = _exec_environ(before["pid"], before["id"])["TT_VISIBLE_DEVICES"]
    os.kill(before["pid"], signal.SIGKILL)
    seen = []

    def restarted():
        lease = server.lease_of(kernel_id)
        if not lease or lease["pid"] == before["pid"]:
            return None
        env = kernel_environ(lease["pid"]) if not pid_gone(lease["pid"]) else {}
        seen.append((lease["id"], lease["pid"], len(env), env.get("JUPYTER_TT_LEASE")))
        return env.get("JUPYTER_TT_LEASE") == lease["id"] and (lease, env)

    try:
        after, env = wait_until(restarted, timeout=40, message="the kernel to restart on its lease")
    except AssertionError as e:  # say what was seen: lease, pid, size of its environment, its lease variable
        raise AssertionError(f"{e}; seen {sorted(set(seen))[-5:]}") from None
    assert after["id"] == before["id"]
    assert env["TT_VISIBLE_DEVICES"] == bdfs


def test_final_death_after_the_restart_limit_frees_the_devices(servers):
    server = servers(args=["--KernelRestarter.restart_limit=0"])
    kernel_id = server.start_kernel("tt-n300")
    lease = server.lease_of(kernel_id)
    os.kill(lease["pid"], signal.SIGKILL)
    wait_until(lambda: server.leases() == [], timeout=20, message="the dead kernel's lease to end")
    assert "restart limit" in server.log_text()
    assert "kernel died and the restart limit was reached" in _end_reason(server, lease["id"])


def _end_reason(server, lease_id):
    from jupyter_tt.config import TTSettings
    from jupyter_tt.devices import open_inventory
    from jupyter_tt.scheduler import Scheduler

    settings = TTSettings()
    scheduler = Scheduler(open_inventory(server.env["JUPYTER_TT_INVENTORY"]), settings.state_dir, user="test")
    return next(h["end_reason"] for h in scheduler.history() if h["lease_id"] == lease_id)


def test_a_culled_kernel_frees_its_devices(servers):
    server = servers(args=["--MappingKernelManager.cull_idle_timeout=2", "--MappingKernelManager.cull_interval=1"])
    kernel_id = server.start_kernel("tt-n300")
    lease = server.lease_of(kernel_id)
    wait_until(lambda: server.leases() == [], timeout=30, message="the idle kernel to be culled")
    # The lease ends in the provisioner's cleanup, a moment before the server forgets the kernel.
    wait_until(lambda: kernel_id not in [k["id"] for k in server.json("/api/kernels")], message="the kernel to go")
    assert _end_reason(server, lease["id"]) == "kernel shut down"


def test_server_killed_with_sigkill_its_leases_are_reconciled_by_the_next_server(servers):
    first = servers(name="first")
    leases = [first.lease_of(first.start_kernel("tt-n300")) for _ in range(2)]
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    for lease in leases:  # ipykernel exits when its parent dies
        wait_until(lambda pid=lease["pid"]: pid_gone(pid), timeout=20, message="the orphaned kernel to exit")
    second = servers(name="second")
    assert second.leases() == []
    assert {d["state"] for d in second.json("/jupyter-tt/api/devices")["devices"]} == {"free"}
    assert second.lease_of(second.start_kernel("tt-loudbox"))["devices"] == [0, 1, 2, 3]


def test_a_kernel_start_waits_in_the_queue_and_starts_when_a_device_frees(servers):
    server = servers(inventory="simulated:n300x1")
    holder = server.start_kernel("tt-n300")
    started = {}
    thread = threading.Thread(target=lambda: started.setdefault("id", server.start_kernel("tt-n300")))
    thread.start()
    queue = wait_until(lambda: server.json("/jupyter-tt/api/queue")["requests"], message="the request to queue")
    assert [(r["position"], r["devices"], r["card_type"]) for r in queue] == [(1, 1, "n300")]
    # The wait runs in a worker thread, which logs the position just after the request is queued.
    wait_until(lambda: "position 1 in the queue" in server.log_text(), timeout=5, message="the position in the log")
    server.shutdown_kernel(holder)
    thread.join(30)
    assert server.lease_of(started["id"])["devices"] == [0]
    assert server.json("/jupyter-tt/api/queue")["requests"] == []


def test_wait_timeout_ends_the_start_with_a_clear_error(servers):
    server = servers(inventory="simulated:n300x1")
    server.start_kernel("tt-n300")
    response = server.http.post("/api/kernels", json={"name": "tt-n300-quick"})
    assert response.status_code == 503
    assert "no 1 n300 became free within 1 s" in response.json()["message"]
    assert server.json("/jupyter-tt/api/queue")["requests"] == []


def test_two_servers_of_two_users_share_devices_fairly_and_never_twice(servers):
    alice = servers(inventory="simulated:n300x2", user="alice", name="alice")
    bob = servers(inventory="simulated:n300x2", user="bob", name="bob")
    held = [alice.start_kernel("tt-n300"), alice.start_kernel("tt-n300")]
    started = {}
    waiters = [
        threading.Thread(target=lambda: started.setdefault("alice", alice.start_kernel("tt-n300"))),
        threading.Thread(target=lambda: started.setdefault("bob", bob.start_kernel("tt-n300"))),
    ]
    waiters[0].start()
    wait_until(lambda: len(bob.json("/jupyter-tt/api/queue")["requests"]) == 1)
    waiters[1].start()
    queue = wait_until(lambda: (q := bob.json("/jupyter-tt/api/queue")["requests"]) and len(q) == 2 and q)
    assert [r["user"] for r in queue] == ["bob", "alice"]  # bob holds nothing, alice holds 2

    alice.shutdown_kernel(held[0])
    waiters[1].join(30)
    assert bob.lease_of(started["bob"]) is not None
    assert [r["user"] for r in alice.json("/jupyter-tt/api/queue")["requests"]] == ["alice"]
    leases = alice.leases()
    devices = [d for lease in leases for d in lease["devices"]]
    assert sorted(devices) == [0, 1] and {lease["user"] for lease in leases} == {"alice", "bob"}
    alice.shutdown_kernel(held[1])
    waiters[0].join(30)
    assert alice.lease_of(started["alice"]) is not None


@pytest.mark.parametrize(
    "config, message",
    [
        ({"devices": "two"}, "bad tt-provisioner config"),
        ({"devices": 1, "card_type": "n400"}, "unknown card type 'n400'"),
        ({"devices": 9, "card_type": "n300"}, "this host has 4 n300 (simulated): 9 n300 can never be leased"),
        ({"devices": 1, "gpus": 2}, "unknown key gpus"),
    ],
)
def test_bad_kernelspec_config_gets_a_clear_error(servers, config, message, tmp_path):
    import json

    from jupyter_core.paths import jupyter_data_dir

    from jupyter_tt.kernels.kernelspec import kernelspec

    spec = kernelspec(1, "any")
    spec["metadata"]["kernel_provisioner"]["config"] = config
    folder = os.path.join(jupyter_data_dir(), "kernels", "tt-bad")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump(spec, f)
    server = servers()
    response = server.http.post("/api/kernels", json={"name": "tt-bad"})
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert server.leases() == []


def test_the_provisioner_info_jupyter_client_persists_carries_the_lease_and_restores_it(kernelspecs, monkeypatch):
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")

    async def persist_and_restore():
        km = AsyncKernelManager(kernel_name="tt-n300")
        await km.start_kernel()
        try:
            info = await km.provisioner.get_provisioner_info()  # was sync: TypeError on a coroutine
            assert info["lease_id"] == km.provisioner.lease.id and info["pid"] == km.provisioner.pid
            other = type(km.provisioner)(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
            await other.load_provisioner_info(info)
            assert (other.lease.id, other.lease.devices) == (km.provisioner.lease.id, km.provisioner.lease.devices)
        finally:
            await km.shutdown_kernel(now=True)

    asyncio.run(persist_and_restore())
