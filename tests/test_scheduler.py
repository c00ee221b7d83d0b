"""The host-wide scheduler through its Python API, with real processes for the crash cases."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jupyter_tt.devices import SimulatedInventory, SysfsInventory
from jupyter_tt.errors import LeaseError, RequestError, WaitTimeout
from jupyter_tt.scheduler import Lease, Scheduler, Waiting
from tests.support.sysfs_tree import Card, make_host


def scheduler_for(state_dir, spec="n300x4", user="alice", **kw):
    return Scheduler(SimulatedInventory(spec), state_dir, user=user, **kw)


def holder_process(state_dir, spec, count, card_type="any", attach_child=False):
    """Start a process that acquires ``count`` devices, prints the lease id, and sleeps."""
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        from jupyter_tt.devices import SimulatedInventory
        from jupyter_tt.scheduler import Scheduler
        s = Scheduler(SimulatedInventory({spec!r}), {str(state_dir)!r}, user="carol")
        lease = s.acquire({count}, {card_type!r}, timeout=30)
        child = None
        if {attach_child}:
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            s.attach_kernel(lease.id, child.pid)
        print(lease.id, child.pid if child else 0, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lease_id, child = proc.stdout.readline().split()
    return proc, lease_id, int(child)


def test_acquire_leases_distinct_devices_until_none_is_free(state_dir):
    s = scheduler_for(state_dir)
    first = s.acquire(2, "n300")
    second = s.acquire(2, "n300")
    assert set(first.device_ids).isdisjoint(second.device_ids)
    assert isinstance(s.submit(1, "n300"), Waiting)


def test_two_schedulers_on_one_state_dir_never_share_a_device(state_dir):
    a, b = scheduler_for(state_dir, user="alice"), scheduler_for(state_dir, user="bob")
    leases = [a.acquire(1), b.acquire(1), a.acquire(1), b.acquire(1)]
    ids = [d for lease in leases for d in lease.device_ids]
    assert sorted(ids) == [0, 1, 2, 3]
    assert {lease.id for lease in a.leases()} == {lease.id for lease in b.leases()}


def test_release_frees_the_devices_and_records_history(state_dir):
    s = scheduler_for(state_dir)
    lease = s.acquire(4, "n300")
    assert s.release(lease.id, reason="done")
    assert s.leases() == []
    assert s.acquire(4, "n300").device_ids == [0, 1, 2, 3]
    [entry] = s.history()
    assert entry["lease_id"] == lease.id and entry["end_reason"] == "done" and entry["devices"] == [0, 1, 2, 3]
    assert not s.release(lease.id)  # already ended


def test_queue_serves_the_user_holding_fewer_devices_first(state_dir):
    alice, bob = scheduler_for(state_dir, "n300x2", "alice"), scheduler_for(state_dir, "n300x2", "bob")
    held = [alice.acquire(1), alice.acquire(1)]
    alice_wait = alice.submit(1, "n300")  # first come...
    time.sleep(0.01)
    bob_wait = bob.submit(1, "n300")  # ...but alice holds 2, bob none
    assert [w.user for w in alice.queue()] == ["bob", "alice"]
    assert alice.check(bob_wait.request_id).position == 1
    alice.release(held[0].id)
    assert isinstance(bob.check(bob_wait.request_id), Lease)
    assert isinstance(alice.check(alice_wait.request_id), Waiting)


def test_first_come_first_served_among_users_holding_the_same(state_dir):
    s1, s2 = scheduler_for(state_dir, "n150x1", "alice"), scheduler_for(state_dir, "n150x1", "bob")
    holder = scheduler_for(state_dir, "n150x1", "carol").acquire(1)
    first = s2.submit(1)
    second = s1.submit(1)
    assert (first.position, s1.check(second.request_id).position) == (1, 2)
    s1.release(holder.id)
    assert isinstance(s2.check(first.request_id), Lease)


def test_a_waiting_request_keeps_later_ones_off_its_card_type_but_not_others(state_dir):
    s = scheduler_for(state_dir, "n150x1,n300x2")
    s.acquire(1, "n300")
    big = s.submit(2, "n300")
    assert isinstance(big, Waiting)
    assert isinstance(s.submit(1, "n300"), Waiting)  # would jump ahead of the 2×n300 request
    assert isinstance(s.submit(1, "n150"), Lease)


def test_a_request_behind_one_that_waits_is_served_from_cards_the_waiter_cannot_use_and_the_waiter_keeps_its_own(state_dir):
    alice, bob, carol, dave = (scheduler_for(state_dir, "n150x2,n300x4", u) for u in ("alice", "bob", "carol", "dave"))
    held = [alice.acquire(1, "n300") for _ in range(3)]
    big = bob.submit(4)  # "any" four: only the n300s can ever meet it
    assert isinstance(big, Waiting) and big.reserved == 1
    assert "1 free card is kept for you" in big.message
    assert isinstance(carol.submit(1, "n150"), Lease)  # backfilled: bob will never use an n150
    later = dave.submit(1, "n300")
    assert isinstance(later, Waiting) and later.reserved == 0  # the free n300 is bob's
    with pytest.raises(WaitTimeout, match=r"free now: 1 n150, 1 n300, of which 1 kept for requests ahead of you"):
        carol.acquire(1, "n300", timeout=0.2)
    for lease in held:
        alice.release(lease.id)
    assert len(bob.check(big.request_id).device_ids) == 4
    assert isinstance(dave.check(later.request_id), Waiting)


def test_wait_timeout_fails_with_position_and_leaves_the_queue(state_dir):
    s = scheduler_for(state_dir, "n300x1")
    s.acquire(1)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        s.acquire(1, "n300", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert "within 0.5 s" in str(info.value) and "position 1 of 1" in str(info.value)
    assert s.queue() == []


def test_a_waiter_is_granted_when_a_device_frees(state_dir):
    s = scheduler_for(state_dir, "n300x1")
    lease = s.acquire(1)
    positions = []
    import threading

    threading.Timer(0.5, lambda: scheduler_for(state_dir, "n300x1").release(lease.id)).start()
    got = scheduler_for(state_dir, "n300x1", "bob").acquire(1, timeout=10, on_wait=lambda w: positions.append(w.position))
    assert got.device_ids == [0] and positions == [1]


@pytest.mark.parametrize(
    "count, card_type, message",
    [
        (5, "n300", "this host has 4 n300 \\(simulated\\): 5 n300 can never be leased at once. Ask for at most 4"),
        (1, "n150", "1 n150 can never be leased"),
        (1, "n400", "unknown card type 'n400'"),
        (0, "any", "at least 1"),
    ],
)
def test_requests_that_can_never_be_met_fail_at_once(state_dir, count, card_type, message):
    with pytest.raises(RequestError, match=message):
        scheduler_for(state_dir).submit(count, card_type)


def test_quota_is_enforced_at_once_with_what_is_left(state_dir):
    s = scheduler_for(state_dir, quota=2)
    with pytest.raises(RequestError, match="over alice's quota of 2"):
        s.submit(3)
    s.acquire(1)
    with pytest.raises(RequestError, match="holds 1 device and may hold 2.*at most 1"):
        s.submit(2)
    assert isinstance(s.submit(1), Lease)


def test_lease_of_a_killed_process_is_reclaimed(state_dir):
    proc, lease_id, _ = holder_process(state_dir, "n300x4", 4, "n300")
    s = scheduler_for(state_dir, user="bob")
    assert [lease.id for lease in s.leases()] == [lease_id]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert s.acquire(4, "n300", timeout=5).device_ids == [0, 1, 2, 3]
    assert "exited" in next(h for h in s.history() if h["lease_id"] == lease_id)["end_reason"]


def test_a_reused_pid_does_not_keep_a_lease_alive(state_dir):
    s = scheduler_for(state_dir)
    lease = s.acquire(1)
    # Same PID, different start time: a new process that happens to get the old number.
    s.db.execute("UPDATE leases SET owner_started = owner_started - 1000 WHERE id=?", (lease.id,))
    assert s.reconcile() == [lease.id]


def test_kernel_lease_survives_a_restart_window_then_is_reclaimed_if_not_restarted(state_dir):
    proc, lease_id, child = holder_process(state_dir, "n300x4", 1, attach_child=True)
    try:
        s = scheduler_for(state_dir, user="bob", restart_grace=1.0)
        assert s.get_lease(lease_id).pid == child
        os.kill(child, signal.SIGKILL)
        time.sleep(0.2)
        assert s.reconcile() == []  # the server (owner) may be restarting it
        time.sleep(1.2)
        assert s.reconcile() == [lease_id]
        assert "was not restarted within 1 s" in s.history()[0]["end_reason"]
    finally:
        proc.kill()


def test_detached_lease_follows_its_owner_while_the_kernel_restarts(state_dir):
    s = scheduler_for(state_dir, restart_grace=0.1)
    lease = s.acquire(1)
    kernel = subprocess.Popen([sys.executable, "-c", "pass"])
    s.attach_kernel(lease.id, kernel.pid)
    kernel.wait()
    assert s.detach_kernel(lease.id)
    time.sleep(0.3)
    assert s.reconcile() == [] and s.get_lease(lease.id) is not None


def test_requests_of_a_dead_process_leave_the_queue(state_dir):
    s = scheduler_for(state_dir, "n300x1")
    s.acquire(1)
    code = textwrap.dedent(f"""
        from jupyter_tt.devices import SimulatedInventory
        from jupyter_tt.scheduler import Scheduler
        s = Scheduler(SimulatedInventory("n300x1"), {str(state_dir)!r}, user="bob")
        print(s.submit(1).position, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
    assert [w.user for w in s.queue()] == ["bob"]
    s.reconcile()
    assert s.queue() == []


def test_nobody_can_release_another_users_lease(state_dir):
    lease = scheduler_for(state_dir, user="alice").acquire(1)
    bob = scheduler_for(state_dir, user="bob")
    with pytest.raises(LeaseError, match="belongs to alice") as info:
        bob.release(lease.id, user="bob")
    assert info.value.status_code == 403
    assert bob.get_lease(lease.id) is not None


def test_unhealthy_devices_are_skipped_and_reported(tmp_path, state_dir):
    tree = make_host(tmp_path, [Card(temperature_c=99.0), Card(), Card()])
    s = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice")
    assert s.acquire(2).device_ids == [1, 2]
    states = {d.id: d.state for d in s.device_states()}
    assert states == {0: "unhealthy", 1: "leased", 2: "leased"}


def test_a_device_held_open_outside_any_lease_is_reported_and_not_granted_until_closed(tmp_path, state_dir):
    # Not our child (its parent exits at once): a child of a lease holder counts as covered.
    stray_pid = int(subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True).stdout)
    try:
        tree = make_host(tmp_path, [Card(holders=[stray_pid]), Card()])
        s = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice")
        lease = s.acquire(1)
        assert lease.device_ids == [1]  # device 0 would come first, but a process outside any lease holds it
        report = s.report()
        assert [(d.id, p.pid) for d in report.devices for p in d.unaccounted_processes] == [(0, stray_pid)]
        assert report.devices[0].unaccounted_processes[0].name == "sleep"
        assert {d.id: (d.state, d.held_outside) for d in report.devices} == {0: ("free", True), 1: ("leased", False)}
        assert report.to_json()["unaccounted_processes"][0]["device"] == 0  # the API's list names the device
        tree.set(1, holders=[os.getpid()])  # the lessee's own process holds its node: accounted for
        assert [p.pid for d in s.report().devices for p in d.unaccounted_processes] == [stray_pid]
        s.release(lease.id)
        with pytest.raises(WaitTimeout):
            s.acquire(2, timeout=0.5)  # device 0 is still held
        tree.set(0, holders=[])
        tree.set(1, holders=[])
        s.devices(fresh=True)
        assert s.acquire(2, timeout=5).device_ids == [0, 1]  # closed: both go
    finally:
        os.kill(stray_pid, signal.SIGKILL)


def test_usage_counts_device_hours_per_user(state_dir):
    a, b = scheduler_for(state_dir, user="alice"), scheduler_for(state_dir, user="bob")
    lease = a.acquire(2, "n300")
    a.db.execute("UPDATE leases SET granted_at = granted_at - 1800 WHERE id=?", (lease.id,))
    a.release(lease.id)
    b.acquire(1)
    usage = {u.user: u for u in a.usage()}
    assert usage["alice"].device_hours == pytest.approx(1.0, abs=0.01)
    assert usage["alice"].chip_hours == pytest.approx(2.0, abs=0.02)
    assert usage["bob"].leases == 1 and usage["bob"].device_hours < 0.01


def test_different_inventories_do_not_share_state(state_dir):
    a = scheduler_for(state_dir, "n300x1")
    b = scheduler_for(state_dir, "n150x1")
    a.acquire(1)
    assert b.leases() == [] and isinstance(b.submit(1), Lease)


@pytest.mark.parametrize("step", [-3600.0, -1.0, 1.0, 3600.0])
def test_a_step_of_the_wall_clock_ends_no_lease(state_dir, monkeypatch, step):
    """Liveness reads start ticks since boot, not wall-clock start times: a clock step (here injected
    into this process's clock and psutil's boot time, which the kernel derives from the wall clock)
    changes nothing. A second once ended every lease on the host."""
    import psutil

    proc, lease_id, kernel = holder_process(state_dir, "n300x4", 1, attach_child=True)
    try:
        s = scheduler_for(state_dir, user="bob")
        real_time, real_boot, real_create = time.time, psutil.boot_time, psutil.Process.create_time
        monkeypatch.setattr(time, "time", lambda: real_time() + step)
        monkeypatch.setattr(psutil, "boot_time", lambda: real_boot() + step)
        # What a step does to psutil: a process's create_time() is the boot time plus its start ticks.
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real_create(self) + step)
        assert s.reconcile() == []
        assert s.get_lease(lease_id) is not None
    finally:
        os.kill(kernel, signal.SIGKILL)
        proc.kill()
        proc.wait()
    wait_for_reap = time.monotonic() + 5
    while s.get_lease(lease_id) is not None and time.monotonic() < wait_for_reap:  # the orphaned kernel is reaped by init
        s.reconcile()
        time.sleep(0.05)
    assert s.get_lease(lease_id) is None  # and a real death still counts


def test_a_malformed_row_is_left_alone_and_scheduling_goes_on(state_dir):
    s = scheduler_for(state_dir, "n300x2")
    broken = s.acquire(1)
    s.db.execute("UPDATE leases SET owner_pid='x' WHERE id=?", (broken.id,))
    assert s.reconcile() == []  # the bad row neither stops the pass nor is taken for dead
    assert s.acquire(1, timeout=5).device_ids == [1 - broken.device_ids[0]]


def test_one_user_may_have_only_so_many_requests_waiting(state_dir):
    s = scheduler_for(state_dir, "n300x1", max_waiting=2)
    s.acquire(1)
    assert isinstance(s.submit(1), Waiting) and isinstance(s.submit(1), Waiting)
    with pytest.raises(RequestError, match="alice has 2 requests waiting already"):
        s.submit(1)


def test_a_request_that_replaces_its_users_waiting_one_keeps_its_place_and_no_one_elses(state_dir):
    inventory = SimulatedInventory("n150x1")
    zoe, alice, bob = (Scheduler(inventory, state_dir, user=u) for u in ("zoe", "alice", "bob"))
    held = zoe.acquire(1)
    first = alice.submit(1, notebook="/home/alice/a.ipynb")
    theirs = bob.submit(1)
    again = alice.submit(1, notebook="/home/alice/a.ipynb", replaces=first.request_id)
    assert [(w.user, w.position) for w in alice.queue()] == [("alice", 1), ("bob", 2)]
    assert again.since == first.since and first.request_id not in {w.request_id for w in alice.queue()}
    # Someone else's request is not theirs to replace: bob's stays, and alice's new one goes behind it.
    other = alice.submit(1, replaces=theirs.request_id)
    assert [(w.user, w.request_id) for w in alice.queue()] == [
        ("alice", again.request_id), ("bob", theirs.request_id), ("alice", other.request_id)]
    zoe.release(held.id)
    assert isinstance(alice.check(again.request_id), Lease)
