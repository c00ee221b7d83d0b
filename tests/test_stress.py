"""Many processes acquiring and releasing at random while some are killed, then an audit.

Ground truth for "no double lease" is independent of the scheduler: a worker holding a lease takes
a non-blocking flock on one file per device. If the scheduler ever leased a device twice, two live
processes would want the same flock and one would fail. The kernel drops a killed process's flocks
at once, while its lease lives on until reclaimed, so a kill can never cause a false alarm.
"""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Scheduler
from tests.support.os_users import Service

SPEC = "n150x2,n300x6"
WORKER = textwrap.dedent("""
    import fcntl, os, random, sys, time
    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.errors import WaitTimeout
    from jupyter_tt.scheduler import Scheduler, open_scheduler

    state, work, seed, user = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    # Through the scheduler service where JUPYTER_TT_SCHEDULER names one, else on the state dir.
    s = open_scheduler() if os.environ.get("JUPYTER_TT_SCHEDULER") else Scheduler(SimulatedInventory(%r), state, user=user)
    s.poll_interval = 0.02
    ops = os.open(os.path.join(work, "ops"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        count = rng.choice([1, 1, 1, 2, 3])
        card = rng.choice(["any", "n300", "n300", "n150"]) if count <= 2 else "n300"
        try:
            lease = s.acquire(count, card, timeout=rng.uniform(0.05, 1.0))
        except WaitTimeout:
            continue
        files = []
        for d in lease.device_ids:
            f = open(os.path.join(work, f"device-{d}.lock"), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with open(os.path.join(work, "violations"), "a") as v:
                    v.write(f"device {d} leased to {lease.id} while another process held it\\n")
            files.append(f)
        time.sleep(rng.uniform(0, 0.03))
        for f in files:
            f.close()
        s.release(lease.id)
        os.write(ops, b".")
""" % SPEC)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["personal", "service"])
def test_random_acquire_release_and_kills_leave_no_double_lease_and_no_leak(tmp_path, state_dir, mode, monkeypatch):
    rng = random.Random(1234)
    work = tmp_path / "work"
    work.mkdir()
    users = ["alice", "bob", "carol"]
    service = None
    if mode == "service":  # the workers call `jupyter tt scheduler`; the audit reads its state after it stops
        service = Service(inventory=f"simulated:{SPEC}").start()
        monkeypatch.setenv("JUPYTER_TT_SCHEDULER", service.address)
        state_dir = str(service.state_dir)

    def spawn(i):
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, state_dir, str(work), str(i), users[i % len(users)]],
            stderr=subprocess.PIPE,
        )

    workers = [spawn(i) for i in range(6)]
    kills, next_seed = 0, 100
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.5))
        victim = rng.randrange(len(workers))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        kills += 1
        workers[victim] = spawn(next_seed)
        next_seed += 1
    for w in workers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    if service:
        time.sleep(0.5)  # the service's pidfds saw the kills
        service.stop()

    # Audit.
    violations = (work / "violations").read_text() if (work / "violations").exists() else ""
    assert violations == "", violations
    ops = (work / "ops").stat().st_size
    assert ops > 100, f"only {ops} completed acquire/release cycles: the stress did not stress"

    s = Scheduler(SimulatedInventory(SPEC), state_dir, user="auditor")
    if mode == "personal":  # the last kills are reclaimed by the next pass of anyone; the service has run its own
        s.reconcile()
    db = s.db
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0, "leaked leases"
    assert db.execute("SELECT COUNT(*) FROM lease_devices").fetchone()[0] == 0, "leaked devices"
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0, "leaked queue entries"
    assert s.acquire(6, "n300", timeout=1).device_ids == [2, 3, 4, 5, 6, 7]

    # Second, independent audit from the history: no two leases of a device overlap in time.
    by_device = defaultdict(list)
    rows = db.execute("SELECT lease_id, devices_json, granted_at, ended_at, end_reason FROM history").fetchall()
    for row in rows:
        for device in json.loads(row["devices_json"]):
            by_device[device["id"]].append((row["granted_at"], row["ended_at"], row["lease_id"]))
    for device, spans in by_device.items():
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
            assert start_b >= end_a, f"device {device}: {b} granted at {start_b} before {a} ended at {end_a}"
    reclaimed = sum(1 for row in rows if "exited" in row["end_reason"])
    print(f"stress ({mode}): {ops} cycles, {len(rows)} leases, {kills} kills, {reclaimed} leases reclaimed from killed workers")
    assert reclaimed > 0
