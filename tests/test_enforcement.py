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

import pytest

from jupyter_servers import wait_until
from os_users import PYTHON, ask, holder, open_folder, tt
from sysfs_tree import make_host

OPEN = """
import sys
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
    # The service stops: every node is as it found it.
    svc.stop()
    assert all(owner(n) == (0, "0o666") for n in nodes(loudbox))
    assert not (svc.state_dir / "nodes.json").exists()


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
    assert all(owner(n) == (0, "0o666") for n in nodes(loudbox))


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


def test_a_pass_that_runs_after_the_guard_restored_the_nodes_fences_nothing(tmp_path, alice):
    """The service's stop gives the nodes back; a pass already queued behind it must not take them again."""
    from jupyter_tt.scheduler.enforce import NodeGuard, can_change_owners

    if can_change_owners():
        pytest.skip(can_change_owners())
    node = tmp_path / "0"
    node.touch(mode=0o666)
    node.chmod(0o666)
    guard = NodeGuard(tmp_path, reason_not=None)
    assert guard.apply({0: node}, {0: alice.name}) == [f"{node} -> uid {alice.uid} mode 600"]
    guard.restore()
    assert owner(node) == (0, "0o666")
    assert guard.apply({0: node}, {}) == []  # the late pass: free would mean root's 0600
    assert owner(node) == (0, "0o666")
    assert not (tmp_path / "nodes.json").exists()
