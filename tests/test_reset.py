"""Reset after a crash: a card whose holder died is reset before anyone uses it again.

The card is the sysfs fixture (a driver stand-in), and ``tt-smi`` is a fake on PATH (the
``card_host`` fixture, ``tests/support/fake_tt_smi.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.errors import RequestError
from jupyter_tt.scheduler import Lease, PendingReset, Scheduler, Waiting
from jupyter_tt.scheduler.reset import reset_command
from tests.support.fake_tt_smi import environments, ran, reset_of
from tests.support.jupyter_servers import wait_until


def scheduler(tree, state_dir, **kw):
    kw = {"reset_after_crash": True, "reset_tool": "tt-smi", "reset_verify_timeout": 1.0, "reset_verify_linked": 1.0,
          **kw}
    return Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice", **kw)


def killed_holder(tree, state_dir, cards: int = 1) -> tuple[str, int]:
    """A process that leases ``cards`` cards (from card 0) and is then killed with SIGKILL: the lease id and its
    first card."""
    code = textwrap.dedent(f"""
        import time
        from jupyter_tt.devices import SysfsInventory
        from jupyter_tt.scheduler import Scheduler
        lease = Scheduler(SysfsInventory({str(tree.root)!r}), {str(state_dir)!r}, user="carol").acquire({cards}, timeout=30)
        print(lease.id, lease.devices[0].id, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lease_id, device = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return lease_id, int(device)


def state_of(s, device_id):
    """The device as the REST API shows it."""
    return next(d.to_json() for d in s.device_states() if d.id == device_id)


def test_a_killed_holders_card_is_reset_alone_and_leased_again_only_once_its_heartbeat_advances(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    lease_id, card = killed_holder(card_host, state_dir)
    assert lease_id in s.reconcile()
    assert state_of(s, card)["state"] == "resetting" and "exited" in state_of(s, card)["reset"]["reason"]
    waiting = s.submit(2)  # both cards: one is out of the pool until its reset
    assert isinstance(waiting, Waiting)
    assert s.run_resets() == [card]
    assert ran(card_host) == [reset_of(card)]  # that card only: tt-smi -r with no device resets every board
    deadline = time.monotonic() + 10
    while not isinstance(granted := s.check(waiting.request_id), Lease):
        assert time.monotonic() < deadline, state_of(s, card)
        time.sleep(0.2)
    assert sorted(granted.device_ids) == [0, 1]


def test_a_card_whose_heartbeat_stays_frozen_after_the_reset_is_unhealthy_with_the_reason(card_host, state_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "dead")
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    assert s.run_resets() == [card]
    time.sleep(1.3)
    s.reconcile()
    device = state_of(s, card)
    assert device["state"] == "unhealthy" and "heartbeat did not advance within 1 s" in device["problem"]
    assert f"jupyter tt reset {card}" in device["problem"]
    with pytest.raises(RequestError, match="1 more unhealthy"):
        s.submit(2)  # out of the pool: two at once can never be met as things stand
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "revive")  # fixed by hand: reset it again
    assert s.retry_reset(card) and s.run_resets() == [card]
    deadline = time.monotonic() + 10
    while state_of(s, card)["state"] != "free":  # back once its heartbeat advances
        assert time.monotonic() < deadline, state_of(s, card)
        time.sleep(0.2)
        s.reconcile()
    assert isinstance(s.submit(2), Lease)


def test_the_reset_tool_sees_the_card_it_resets_and_no_other_not_the_servers_empty_tt_visible_devices(
        card_host, state_dir, monkeypatch):
    monkeypatch.setenv("TT_VISIBLE_DEVICES", "")  # as the Jupyter server sets it for itself: it would hide every card
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    assert s.run_resets() == [card]
    assert environments(card_host) == [f"TT_VISIBLE_DEVICES={card_host.bdf(card)}"]  # this card's BDF alone


def test_a_failed_reset_leaves_the_card_unhealthy_with_the_tools_message(card_host, state_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "fail")
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    assert s.run_resets() == []
    problem = state_of(s, card)["problem"]
    assert "could not reset it after its holder died" in problem and "reset failed: PCIe link down" in problem


def test_no_reset_runs_while_another_process_holds_the_cards_node(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    card_host.set(card, holders=[os.getpid()])  # the driver lists an open handle
    assert s.run_resets() == [] and ran(card_host) == []
    assert state_of(s, card)["reset"]["waiting_for"] == f"process {os.getpid()} holds its node"
    card_host.set(card, holders=[])
    assert s.run_resets() == [card]


def test_without_the_drivers_pids_file_a_process_holding_the_node_is_found_in_proc_and_the_reset_waits(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    card_host.set(card, pids_file=False)  # tt-kmd older than 2.5 lists no holders
    with open(card_host.root / "dev/tenstorrent" / str(card), "rb"):  # this process holds the node
        assert s.run_resets() == [] and ran(card_host) == []
        assert state_of(s, card)["reset"]["waiting_for"] == f"process {os.getpid()} holds its node"
    assert s.run_resets() == [card]


def test_a_released_lease_needs_no_reset(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    lease = s.acquire(1)
    s.release(lease.id)
    s.reconcile()
    assert s.run_resets() == [] and ran(card_host) == []
    assert {d.state for d in s.device_states()} == {"free"}


def test_without_reset_after_crash_a_killed_holders_card_goes_straight_back(card_host, state_dir):
    s = scheduler(card_host, state_dir, reset_after_crash=False)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    assert state_of(s, card)["state"] == "free" and s.run_resets() == []


def test_without_a_reset_tool_the_card_says_what_to_install(card_host, state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    s.run_resets()
    assert "install tt-smi (pipx install tt-smi) or tt-umd" in state_of(s, card)["problem"]


# ---------------------------------------------------------------- the same lease, restarted after a crash

CRASH = "kernel process 4242 was killed by SIGKILL"


@pytest.fixture
def kernel_process():
    """A live process to attach a lease to, as a kernel's."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def wait_for_reset(s, lease_id, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while s.lease_resets(lease_id):
        assert time.monotonic() < deadline, s.lease_resets(lease_id)
        s.reconcile()  # the pass that sees the heartbeat advance
        time.sleep(0.2)


def test_a_kernel_that_crashed_keeps_its_lease_and_its_cards_are_reset_before_it_restarts(card_host, state_dir, kernel_process):
    s = scheduler(card_host, state_dir)
    lease = s.acquire(1)
    card = lease.devices[0].id
    s.attach_kernel(lease.id, kernel_process)
    assert s.detach_kernel(lease.id, crash=CRASH)
    assert s.lease_resets(lease.id) == [PendingReset(device_id=card, reason=CRASH, waiting_for=None, done=False, failed=None)]
    device = state_of(s, card)
    assert (device["state"], device["lease_id"], device["reset"]["reason"]) == ("resetting", lease.id, CRASH)
    assert s.run_resets() == [card] and ran(card_host) == [reset_of(card)]
    wait_for_reset(s, lease.id)
    assert s.get_lease(lease.id).devices == lease.devices  # the same lease, ready for the restarted kernel
    assert state_of(s, card)["state"] == "leased"


def test_a_clean_restart_resets_nothing(card_host, state_dir, kernel_process):
    s = scheduler(card_host, state_dir)
    lease = s.acquire(1)
    s.attach_kernel(lease.id, kernel_process)
    assert s.detach_kernel(lease.id)
    assert s.lease_resets(lease.id) == [] and s.run_resets() == [] and ran(card_host) == []


def test_a_crashed_kernels_card_that_fails_its_reset_says_why_to_the_lease(card_host, state_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "fail")
    s = scheduler(card_host, state_dir)
    lease = s.acquire(1)
    s.detach_kernel(lease.id, crash=CRASH)
    s.run_resets()
    [pending] = s.lease_resets(lease.id)
    assert "reset failed: PCIe link down" in pending.failed and pending.message.startswith(f"device {pending.device_id} failed")
    s.release(lease.id, reason=pending.message)
    assert state_of(s, pending.device_id)["state"] == "unhealthy"  # out of the pool after the lease, with the reason
    with pytest.raises(RequestError, match="1 more unhealthy"):
        s.submit(2)


def test_a_lease_released_after_a_crash_has_its_cards_reset_before_anyone_else_gets_them(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    lease = s.acquire(2)
    s.release(lease.id, reason="kernel died and the restart limit was reached", crash=CRASH)
    assert {d.state for d in s.device_states()} == {"resetting"}
    waiting = s.submit(1)
    assert isinstance(waiting, Waiting)
    assert sorted(s.run_resets()) == [0, 1]
    deadline = time.monotonic() + 10
    while not isinstance(s.check(waiting.request_id), Lease):
        assert time.monotonic() < deadline, s.device_states()
        s.reconcile()
        time.sleep(0.2)


def test_without_reset_after_crash_a_crashed_kernels_lease_goes_on_at_once(card_host, state_dir):
    s = scheduler(card_host, state_dir, reset_after_crash=False)
    lease = s.acquire(1)
    assert s.detach_kernel(lease.id, crash=CRASH)
    assert s.lease_resets(lease.id) == [] and s.run_resets() == []


@pytest.mark.parametrize("target", [None, -1, "0", True, [0]])
def test_a_reset_command_always_names_exactly_one_device(target):
    with pytest.raises(ValueError, match="an empty target resets every board"):
        reset_command(target)


def test_the_service_resets_by_default_and_personal_mode_does_not(card_host, tmp_path):
    from jupyter_tt.config import TTSettings
    from jupyter_tt.scheduler import open_scheduler
    from jupyter_tt.scheduler.service import SchedulerService

    settings = TTSettings(inventory="sysfs", sysfs_root=str(card_host.root), scheduler="personal",
                          state_dir=str(tmp_path / "personal"))
    assert settings.reset_after_crash is None
    assert SchedulerService(settings, str(tmp_path / "s.sock"), str(tmp_path / "service")).scheduler.reset_after_crash
    assert not open_scheduler(settings).reset_after_crash


def test_by_default_the_service_does_not_reset_where_no_tool_could_so_no_card_is_lost(card_host, tmp_path, monkeypatch):
    """The default must not turn every crashed card unhealthy on a host without tt-smi or tt-umd."""
    from jupyter_tt.config import TTSettings
    from jupyter_tt.scheduler.service import SchedulerService

    monkeypatch.setenv("PATH", "/nonexistent")
    settings = TTSettings(inventory="sysfs", sysfs_root=str(card_host.root), state_dir=str(tmp_path / "p"))
    service = SchedulerService(settings, str(tmp_path / "s.sock"), str(tmp_path / "service"))
    assert not service.scheduler.reset_after_crash and "install tt-smi" in service.resets_off
    _, card = killed_holder(card_host, tmp_path / "service")
    service.scheduler.reconcile()
    assert state_of(service.scheduler, card)["state"] == "free"


def test_the_scheduler_service_resets_a_killed_holders_card_and_leases_it_again(card_host, service):

    with card_host.beating(0.2):  # live firmware: the service would otherwise see every heartbeat stop
        svc = service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)})
        env = {**os.environ, "JUPYTER_TT_SCHEDULER": svc.address}
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import time
            from jupyter_tt.scheduler import open_scheduler
            print(open_scheduler().acquire(1, timeout=30).devices[0].id, flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=env)
        card = int(holder.stdout.readline())
        holder.kill()
        holder.wait()

        def state():  # the service's own view, over its socket
            from jupyter_tt.scheduler.client import ServiceClient

            return next(d.state for d in ServiceClient(str(svc.socket)).report().devices if d.id == card)

        wait_until(lambda: ran(card_host) == [reset_of(card)], timeout=30, message="the service to reset the card")
        wait_until(lambda: state() == "free", timeout=30, message="the card back in the pool")


def test_through_the_service_a_crashed_kernels_lease_waits_for_its_cards_reset(card_host, service, kernel_process):
    from jupyter_tt.scheduler.client import ServiceClient
    from tests.support.jupyter_servers import wait_until

    with card_host.beating(0.2):
        svc = service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)})
        client = ServiceClient(str(svc.socket))
        lease = client.acquire(1, timeout=30)
        card = lease.devices[0].id
        client.attach_kernel(lease.id, kernel_process)
        assert client.detach_kernel(lease.id, crash=CRASH)
        [pending] = client.lease_resets(lease.id)  # over the socket, as the dataclass
        assert (pending.device_id, pending.reason, pending.failed) == (card, CRASH, None)
        wait_until(lambda: client.lease_resets(lease.id) == [], timeout=30, message="the service to reset the card")
        assert ran(card_host) == [reset_of(card)] and client.get_lease(lease.id).device_ids == [card]


@pytest.mark.parametrize("kernel", ["tt-n300", "tt-n300-quick"])  # quick: a 1 s queue wait does not cut the reset short
def test_a_kernel_killed_with_sigkill_restarts_on_its_lease_only_once_its_card_is_reset(card_host, servers, kernelspecs,
                                                                                       monkeypatch, kernel):
    from pathlib import Path

    from jupyter_tt.scheduler.processes import ProcessRef
    from tests.support.jupyter_servers import kernel_environ, pid_gone, wait_until

    monkeypatch.setenv("FAKE_TT_SMI_DELAY", "2")  # a reset that takes a while: the restart must wait for it
    with card_host.beating(0.2):
        server = servers(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)},
                         args=["--TTSettings.reset_after_crash=True", "--TTSettings.reset_tool=tt-smi"])
        kernel_id = server.start_kernel(kernel)
        first = server.lease_of(kernel_id)
        card = first["devices"][0]

        def kernel_on_lease(*old_pids):
            lease = server.lease_of(kernel_id)
            if not lease or lease["pid"] in (*old_pids, server.proc.pid) or pid_gone(lease["pid"]):
                return None
            return kernel_environ(lease["pid"]).get("JUPYTER_TT_LEASE") == lease["id"] and lease

        assert server.http.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
        clean = wait_until(lambda: kernel_on_lease(first["pid"]), timeout=40, message="the clean restart")
        assert ran(card_host) == []  # a kernel that stopped when asked leaves its card as it was

        os.kill(clean["pid"], signal.SIGKILL)
        wait_until(lambda: ran(card_host) == [reset_of(card)], timeout=30, message="the killed kernel's card to be reset")
        # The server runs with TT_VISIBLE_DEVICES="" (for its own kernels); the reset must not inherit it.
        assert environments(card_host) == [f"TT_VISIBLE_DEVICES={card_host.bdf(card)}"]
        device = next(d for d in server.json("/jupyter-tt/api/devices")["devices"] if d["id"] == card)
        assert (device["state"], device["lease_id"]) == ("resetting", first["id"])
        assert "was killed by SIGKILL" in device["reset"]["reason"]
        after = wait_until(lambda: kernel_on_lease(first["pid"], clean["pid"]), timeout=40, message="the restart after the reset")
        assert after["id"] == first["id"] and after["devices"] == [card]
        reset_done = float(Path(f"{card_host.log}.done").read_text())  # seconds since boot
        started = ProcessRef.of(after["pid"]).started / os.sysconf("SC_CLK_TCK")
        assert started >= reset_done - 0.011, "the kernel started before its card's reset was done"
        assert "its devices are reset before it restarts" in server.log_text()


def test_a_kernel_that_does_not_stop_when_asked_is_killed_and_its_card_reset_before_the_restart(card_host, servers,
                                                                                              kernelspecs):
    from tests.support.jupyter_servers import kernel_client, wait_until

    with card_host.beating(0.2):
        server = servers(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)},
                         args=["--TTSettings.reset_after_crash=True", "--TTSettings.reset_tool=tt-smi",
                               "--KernelManager.shutdown_wait_time=2"])
        kernel_id = server.start_kernel("tt-n300")
        first = server.lease_of(kernel_id)
        client = kernel_client(kernel_id)
        try:  # hung, as in a device call that never returns: deaf to the interrupt and to SIGTERM
            server.watched(kernel_id, client)
            client.execute("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
            wait_until(lambda: server.json(f"/api/kernels/{kernel_id}")["execution_state"] == "busy", timeout=30,
                       message="the kernel to run the cell")
            assert server.http.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
        finally:
            client.stop_channels()
        assert ran(card_host) == [reset_of(first["devices"][0])]  # the restart answered only after the reset
        after = server.lease_of(kernel_id)
        assert after["id"] == first["id"] and after["pid"] != first["pid"]
        assert "did not stop when asked and was sent SIGTERM" in server.log_text()


def test_a_reset_reads_the_inventory_only_between_the_passes_reads_never_during_one(card_host, state_dir):
    class Watched(SysfsInventory):
        """Counts reads that began while another was under way (the inventory keeps health memory)."""

        overlaps = 0
        reading = threading.Lock()

        def devices(self):
            if not self.reading.acquire(blocking=False):
                Watched.overlaps += 1
                return super().devices()
            try:
                time.sleep(0.02)
                return super().devices()
            finally:
                self.reading.release()

    s = Scheduler(Watched(str(card_host.root)), state_dir, user="alice", reset_after_crash=True, reset_tool="tt-smi",
                  reset_verify_timeout=1.0, reset_verify_linked=1.0)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    resetting = threading.Thread(target=s.run_resets)
    resetting.start()
    while resetting.is_alive():
        s.devices(fresh=True)  # as the service's passes do while a reset runs in its own thread
    assert ran(card_host) == [reset_of(card)]
    assert Watched.overlaps == 0


def test_a_holder_in_another_pid_namespace_is_named_so_and_the_reset_waits_for_it(card_host, state_dir):
    """tt-kmd 2.7+ lists a holder the host cannot see (a container's process) as pid 0."""
    s = scheduler(card_host, state_dir)
    _, card = killed_holder(card_host, state_dir)
    s.reconcile()
    card_host.set(card, holders=[0])
    assert s.run_resets() == [] and ran(card_host) == []
    assert state_of(s, card)["reset"]["waiting_for"] == "a process in another PID namespace (a container?) holds its node"
    [held] = state_of(s, card)["unaccounted_processes"]
    assert held["name"] == "a process in another PID namespace (a container?)" and held["user"] is None


def beat(tree, card: int, value: int) -> None:
    (tree.root / f"sys/class/tenstorrent/tenstorrent!{card}/tt_heartbeat").write_text(f"{value}\n")


def test_a_card_returns_only_after_two_new_heartbeats_after_its_reset_not_one(card_host, state_dir, monkeypatch):
    """One change is what a card whose sysfs was not back when first read, or a firmware frozen at another
    value, shows: not enough."""
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "dead")  # the fake reset leaves the heartbeat alone
    s = scheduler(card_host, state_dir, reset_verify_timeout=60.0, reset_verify_linked=60.0)
    _, card = killed_holder(card_host, state_dir)
    beat(card_host, card, 500)  # as the card beat before its reset: the value the reset is judged against
    s.reconcile()
    assert s.run_resets() == [card]
    s.reconcile()
    assert state_of(s, card)["state"] == "resetting"  # still 500: no new beat
    beat(card_host, card, 7)  # the first value after the reset (or after sysfs came back)
    s.reconcile()
    assert state_of(s, card)["state"] == "resetting"
    s.reconcile()
    assert state_of(s, card)["state"] == "resetting"  # frozen at 7: still one change only
    beat(card_host, card, 8)
    s.reconcile()
    assert state_of(s, card)["state"] == "free"


def test_holders_are_read_again_just_before_each_cards_reset(card_host, state_dir, monkeypatch):
    """Two cards out for a reset: while the first one's reset runs, a process opens the second one's node."""
    monkeypatch.setenv("FAKE_TT_SMI_DELAY", "1")
    s = scheduler(card_host, state_dir)
    _, first = killed_holder(card_host, state_dir, cards=2)
    s.reconcile()
    second = next(i for i in (0, 1) if i != first)

    def open_the_second_once_the_first_reset_runs():
        wait_until(lambda: ran(card_host) == [reset_of(first)], timeout=10, message="the first reset to start")
        card_host.set(second, holders=[os.getpid()])

    opener = threading.Thread(target=open_the_second_once_the_first_reset_runs)
    opener.start()
    assert s.run_resets() == [first]  # not the second: its holder was read again before its reset
    opener.join(10)
    assert ran(card_host) == [reset_of(first)]
    assert state_of(s, second)["reset"]["waiting_for"] == f"process {os.getpid()} holds its node"


def test_a_card_linked_to_others_by_ethernet_gets_minutes_to_beat_again_a_lone_one_seconds():
    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.scheduler.resets import LINKED_VERIFY_TIMEOUT, verify_timeout_for

    loudbox = SimulatedInventory("n300x4").devices()
    assert verify_timeout_for(loudbox[0], loudbox, 30.0) == LINKED_VERIFY_TIMEOUT == 300.0
    lone = SimulatedInventory("n300x1").devices()
    assert verify_timeout_for(lone[0], lone, 30.0) == 30.0
    mixed = SimulatedInventory("n150x2,n300x1").devices()
    assert {verify_timeout_for(d, mixed, 30.0) for d in mixed} == {30.0}


CRASHED_HOLDER = """
import sys, time
from jupyter_tt.scheduler import open_scheduler
scheduler = open_scheduler()
lease = scheduler.acquire(1, timeout=30)
print(lease.id, lease.devices[0].id, flush=True)
sys.stdin.readline()  # then its kernel crashed: the restart waits for the card's reset, as the provisioner does
scheduler.detach_kernel(lease.id, crash="kernel process 4242 was killed by SIGKILL")
print("detached", flush=True)
time.sleep(600)
"""


def test_a_card_out_for_a_reset_is_roots_until_it_is_back_then_its_lessees_again(card_host, service, alice,
                                                                                 monkeypatch):
    """Through the enforcing service: while a crashed kernel's card resets, none of its user's processes can open it."""
    from tests.support.os_users import PYTHON

    monkeypatch.setenv("FAKE_TT_SMI_DELAY", "3")  # a reset long enough to look at the node during it
    with card_host.beating(0.2):
        svc = service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)})
        proc = alice.popen([PYTHON, "-c", CRASHED_HOLDER], env=alice.env(JUPYTER_TT_SCHEDULER=svc.address),
                           stdin=subprocess.PIPE)
        try:
            lease_id, card = proc.stdout.readline().split()
            node = card_host.root / "dev/tenstorrent" / card
            wait_until(lambda: node.stat().st_uid == alice.uid, timeout=30, message="the node to be alice's")
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "detached"
            wait_until(lambda: ran(card_host) == [reset_of(int(card))], timeout=30, message="the reset to start")
            assert (node.stat().st_uid, node.stat().st_mode & 0o777) == (0, 0o600)  # root's while it resets
            wait_until(lambda: node.stat().st_uid == alice.uid, timeout=60, message="the node back to alice after the reset")
        finally:
            proc.kill()
            proc.wait()
