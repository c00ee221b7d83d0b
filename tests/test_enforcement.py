"""Device nodes that only the lessee can open: the scheduler service fences a sysfs fixture host.

STAND-IN: this machine has no card, so the nodes are files in a temp tree (``JUPYTER_TT_SYSFS_ROOT``)
instead of tt-kmd's character devices. Opening one as a user is what tt-umd does first, and the kernel
decides it by the file's owner and mode exactly as for ``/dev/tenstorrent/N``. The fixture's nodes
start world-openable (0666), as on hosts whose udev rule opens them to everyone.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jupyter_tt.scheduler import protocol
from jupyter_tt.scheduler.client import ServiceClient
from tests.support.jupyter_servers import wait_until
from tests.support.os_users import PYTHON, ask, holder, open_folder, tt
from tests.support.sysfs_tree import make_host

OPEN = """
import sys
import threading
try:
    open(sys.argv[1], "r+b").close()
    print("opened")
except OSError as e:
    print(e.errno)
"""


@pytest.fixture
def loudbox():
    """A LoudBox's tree (4 n300) in a folder every user may enter, its nodes 0666 root:root."""
    tree = make_host(open_folder("jupyter-tt-host-") / "root", "loudbox")
    for node in nodes(tree):
        node.chmod(0o666)
    with tree.beating():
        yield tree


def nodes(tree) -> list:
    return [tree.root / "dev/tenstorrent" / str(i) for i in range(len(tree.cards))]


def owner(node) -> tuple[int, str]:
    st = node.stat()
    return st.st_uid, oct(stat.S_IMODE(st.st_mode))


def opens(user, node, **env) -> bool:
    """Whether ``user`` can open ``node`` for reading and writing (False: EACCES)."""
    out = user.run([PYTHON, "-c", OPEN, str(node)], env=user.env(**env))
    assert out.returncode == 0, out.stderr
    answer = out.stdout.strip()
    assert answer in ("opened", str(errno.EACCES)), answer
    return answer == "opened"


def fenced_service(service, tree, **kw):
    return service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(tree.root)}, **kw)


def leased_node(user, svc, tree, lease_id):
    [device] = ask(user, svc, "get_lease", lease_id=lease_id)["result"]["$lease"]["devices"]
    return nodes(tree)[device["id"]], device


def test_a_leased_node_opens_for_its_lessee_only_and_a_free_node_for_nobody(service, loudbox, alice, bob):
    svc = fenced_service(service, loudbox)
    hello = ask(alice, svc, "hello")["result"]
    assert hello["enforcing"] is True, hello
    assert all(owner(n) == (0, "0o600") for n in nodes(loudbox))  # free: root's, 0600
    assert not opens(alice, nodes(loudbox)[0]) and not opens(bob, nodes(loudbox)[0])

    proc, lease_id = holder(alice, svc)
    try:
        mine, device = leased_node(alice, svc, loudbox, lease_id)
        assert owner(mine) == (alice.uid, "0o600")
        assert opens(alice, mine)
        # bob cannot, whatever his environment claims; nor can alice open a card she holds no lease on.
        assert not opens(bob, mine, TT_VISIBLE_DEVICES=device["bdf"], JUPYTER_TT_LEASE=lease_id)
        assert not any(opens(alice, n) for n in nodes(loudbox) if n != mine)
        # A node that udev re-created (a driver reload) is fenced again within a pass.
        mine.unlink()
        mine.touch(mode=0o666)
        mine.chmod(0o666)
        wait_until(lambda: owner(mine) == (alice.uid, "0o600"), timeout=5, message="the re-created node to be fenced")
    finally:
        proc.kill()
        proc.wait()
    # The lease ended with its holder: the node is nobody's again.
    wait_until(lambda: owner(mine) == (0, "0o600"), timeout=5, message="the node to go back to root")
    assert not opens(alice, mine)
    # The service stops: it fails closed, every node root's, none open to bob until it is back.
    svc.stop()
    assert all(owner(n) == (0, "0o600") for n in nodes(loudbox))
    assert not any(opens(bob, n) for n in nodes(loudbox))
    # Uninstalling: --unfence gives every node back what it had before the service.
    out = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "scheduler", "--socket", str(svc.socket), "--state-dir",
                          str(svc.state_dir), "--unfence"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count("gave back") == 4, out.stdout + out.stderr
    assert all(owner(n) == (0, "0o666") for n in nodes(loudbox))
    assert not (svc.state_dir / "nodes.json").exists()


def test_unfence_is_refused_while_the_service_serves(service, loudbox):
    svc = fenced_service(service, loudbox)
    out = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "scheduler", "--socket", str(svc.socket), "--state-dir",
                          str(svc.state_dir), "--unfence"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "stop it first (systemctl stop jupyter-tt-scheduler)" in out.stderr, out.stderr
    assert all(owner(n) == (0, "0o600") for n in nodes(loudbox))


def test_the_udev_rule_makes_nodes_root_only_after_tt_kmds_own_rule():
    out = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "scheduler", "--print-udev-rule"], capture_output=True,
                         text=True, timeout=60)
    rules = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    # tt-kmd's udev-50-tenstorrent.rules is KERNEL=="tenstorrent*", MODE="0666": a later file, the same match, 0600.
    assert rules == ['KERNEL=="tenstorrent*", OWNER="root", GROUP="root", MODE="0600"']


def test_devices_of_a_kernel_restarted_after_a_service_kill_stay_fenced_and_come_back_at_its_stop(service, loudbox, alice):
    svc = fenced_service(service, loudbox)
    proc, lease_id = holder(alice, svc, count=2)
    try:
        svc.kill()  # SIGKILL: no clean-up
        held = [n for n in nodes(loudbox) if owner(n)[0] == alice.uid]
        assert len(held) == 2 and all(opens(alice, n) for n in held)  # the holder keeps its devices
        record = json.loads((svc.state_dir / "nodes.json").read_text())
        assert {v["mode"] for v in record.values()} == {0o666}  # what was there before the service
        svc.start()
        assert [n for n in nodes(loudbox) if owner(n)[0] == alice.uid] == held
        assert ask(alice, svc, "get_lease", lease_id=lease_id)["result"]["$lease"]["id"] == lease_id
    finally:
        proc.kill()
        proc.wait()
    svc.stop()
    assert all(owner(n) == (0, "0o600") for n in nodes(loudbox))  # fail closed, whatever the leases said


def test_jupyter_tt_run_is_how_a_script_gets_a_node_it_may_open(service, loudbox, alice, bob):
    svc = fenced_service(service, loudbox)
    script = "import os, sys; [open(os.path.join(sys.argv[1], 'dev/tenstorrent', str(i)), 'r+b') for i in range(4)]"
    # Which nodes alice's command may open, tried one by one: exactly the one it leased.
    probe = (f"import os, sys\nroot = {str(loudbox.root)!r}\nfor i in range(4):\n"
             f"    try:\n        open(os.path.join(root, 'dev/tenstorrent', str(i)), 'r+b'); print(i)\n"
             f"    except PermissionError:\n        pass\n")
    out = alice.tt("run", "--devices", "1", "--", PYTHON, "-c", probe, env=alice.env(JUPYTER_TT_SCHEDULER=svc.address))
    assert out.returncode == 0, out.stderr
    opened = [int(i) for i in out.stdout.split()]
    assert len(opened) == 1 and f"device {opened[0]} (n300" in out.stderr
    # Without `run`, the same script opens nothing.
    out = alice.run([PYTHON, "-c", script, str(loudbox.root)], env=alice.env())
    assert out.returncode == 1 and "PermissionError" in out.stderr
    assert all(owner(n) == (0, "0o600") for n in nodes(loudbox))  # the command exited: its lease ended
    assert not any(opens(bob, n) for n in nodes(loudbox))


def test_a_service_that_cannot_change_owners_says_it_only_coordinates(service, loudbox, alice, bob):
    svc = fenced_service(service, loudbox, as_user=bob)  # a dedicated user without CAP_CHOWN
    hello = ask(alice, svc, "hello")["result"]
    assert hello["enforcing"] is False and "without CAP_CHOWN" in hello["enforcement"], hello
    proc, lease_id = holder(alice, svc)
    try:
        assert all(owner(n) == (0, "0o666") for n in nodes(loudbox))  # untouched
        out = tt(alice, svc, "devices")
        assert "Enforcement: coordination only: the service runs as uid" in out.stdout, out.stdout + out.stderr
    finally:
        proc.kill()
    assert "coordination only" in svc.log_text()


def test_a_simulated_inventory_has_nothing_to_fence_and_says_so(service, alice):
    svc = service()
    hello = ask(alice, svc, "hello")["result"]
    assert hello["enforcing"] is False
    assert hello["enforcement"] == "coordination only: the simulated inventory has no device nodes to fence"
    assert os.path.exists(svc.socket)


def test_a_pass_that_runs_after_the_service_closed_the_nodes_opens_none_again(tmp_path, alice):
    """The service's stop makes every node root's; a pass already queued behind it must not give one out."""
    from jupyter_tt.scheduler.enforce import NodeGuard, can_change_owners

    if can_change_owners():
        pytest.skip(can_change_owners())
    node = tmp_path / "0"
    node.touch(mode=0o666)
    node.chmod(0o666)
    guard = NodeGuard(tmp_path, reason_not=None)
    assert guard.apply({0: node}, {0: alice.name}) == [f"{node} -> uid {alice.uid} mode 600"]
    assert guard.close({0: node}) == [f"{node} -> uid 0 mode 600"]
    assert guard.apply({0: node}, {0: alice.name}) == []  # the late pass
    assert owner(node) == (0, "0o600")
    assert json.loads((tmp_path / "nodes.json").read_text())[str(node)]["mode"] == 0o666  # kept for --unfence


def test_a_node_opened_before_the_service_fenced_it_is_not_granted_while_its_holder_keeps_it(service, loudbox, alice, bob):
    # Between boot and the service's start (a host without the udev rule), bob opens card 0 and keeps it.
    # The driver lists no holders here (older than 2.5): the service finds him in /proc/*/fd.
    for i in range(len(loudbox.cards)):
        loudbox.set(i, pids_file=False)
    keeper = bob.popen([PYTHON, "-c", f"import time; f = open({str(nodes(loudbox)[0])!r}, 'r+b'); print('open', flush=True); "
                                      f"time.sleep(600)"])
    assert keeper.stdout.readline().strip() == "open"
    svc = fenced_service(service, loudbox)
    try:
        assert owner(nodes(loudbox)[0]) == (0, "0o600")  # fenced, but his descriptor stays open
        proc, lease_id = holder(alice, svc)
        _, device = leased_node(alice, svc, loudbox, lease_id)
        assert device["id"] != 0  # card 0 would come first: it is held outside the scheduler
        report = protocol.decode(ask(bob, svc, "report")["result"])
        card0 = next(d for d in report.devices if d.id == 0)
        assert card0.held_outside and card0.lease_id is None
        [seen] = [p for d in protocol.decode(ask(alice, svc, "report")["result"]).devices for p in d.unaccounted_processes]
        assert seen.user == bob.name and seen.pid is None  # alice sees that bob holds it, not his process
        root_view = tt_root(svc, "devices")
        assert "free (held outside)" in root_view and f"pid {keeper.pid}" in root_view
        keeper.kill()
        keeper.wait()
        more = [holder(alice, svc)[0] for _ in range(3)]  # once closed, card 0 goes out again
        assert sorted(d["id"] for lease in ask(alice, svc, "leases")["result"] for d in lease["$lease"]["devices"]) == [0, 1, 2, 3]
        for p in [proc, *more]:
            p.kill()
    finally:
        keeper.kill()


def tt_root(svc, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "JUPYTER_TT_SCHEDULER": svc.address})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_lease_is_answered_only_once_its_node_opens_for_its_user(service, loudbox, alice):
    svc = fenced_service(service, loudbox)
    # root churns a lease meanwhile (root is exempt from the lease rate): before, the change it made
    # could be taken for alice's, and her answer went out before her node was fenced
    stop = threading.Event()

    def churn():
        client = ServiceClient(str(svc.socket))
        while not stop.is_set():
            client.release(client.acquire(1, timeout=10).id)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        out = alice.python(f"""
        import os
        from jupyter_tt.scheduler.client import ServiceClient
        c = ServiceClient({str(svc.socket)!r})
        failed = 0
        for _ in range(30):
            lease = c.acquire(1, timeout=10)
            try:  # at once, as a kernel started with the lease's TT_VISIBLE_DEVICES does
                open(os.path.join({str(loudbox.root)!r}, "dev/tenstorrent", str(lease.devices[0].id)), "r+b").close()
            except PermissionError:
                failed += 1
            c.release(lease.id)
        print(failed)
    """, timeout=120)
    finally:
        stop.set()
        churner.join(timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_a_lease_granted_in_a_pass_is_answered_only_once_its_node_opens_for_its_user(service, loudbox, alice, bob):
    svc = fenced_service(service, loudbox)
    # alice waits for a card that bob's process holds, asking on four connections at once; bob's process
    # dies, and the pass its exit wakes grants her the card. Before, that pass fenced the node in a later
    # turn of the lease lane, and one of her questions, queued meanwhile, was answered in between.
    code = f"""
    import os, threading
    from jupyter_tt.errors import LeaseError
    from jupyter_tt.scheduler import Lease
    from jupyter_tt.scheduler.client import ServiceClient
    waiting = ServiceClient({str(svc.socket)!r}).submit(4)
    print(waiting.request_id, flush=True)
    failed, opened = [], []

    def ask():
        c = ServiceClient({str(svc.socket)!r})
        while True:
            try:
                lease = c.check(waiting.request_id)
            except LeaseError:  # another of her connections was answered with the lease
                return
            if isinstance(lease, Lease):
                break
        for d in lease.devices:  # at once, as a kernel started with the lease's TT_VISIBLE_DEVICES does
            try:
                open(os.path.join({str(loudbox.root)!r}, "dev/tenstorrent", str(d.id)), "r+b").close()
                opened.append(d.id)
            except PermissionError:
                failed.append(d.id)

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(30)
    print(len(failed), len(opened), flush=True)
    """
    failures = 0
    for _ in range(6):
        keeper, _ = holder(bob, svc, count=4)
        asker = alice.popen([PYTHON, "-c", textwrap.dedent(code)])
        try:
            assert asker.stdout.readline().startswith("req-")
            time.sleep(0.3)  # her four connections ask on
            keeper.kill()
            keeper.wait()
            out, err = asker.communicate(timeout=60)
            assert asker.returncode == 0, err
            failed, opened = map(int, out.split()[-2:])
            assert opened + failed == 4, out  # the one connection answered with the lease opened its four
            failures += failed
        finally:
            keeper.kill()
            asker.kill()
    assert failures == 0
