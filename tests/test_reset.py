"""Reset after a crash: a card whose holder died is reset before anyone uses it again.

The card is the sysfs fixture (a driver stand-in), and ``tt-smi`` is a fake on PATH
(``FAKE_TT_SMI``) that records its arguments and then, as told by ``FAKE_TT_SMI_MODE``, brings the
card's firmware heartbeat back to life (``revive``), leaves it frozen (``dead``) or fails (``fail``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.scheduler import Lease, Scheduler, Waiting
from jupyter_tt.scheduler.reset import reset_command
from sysfs_tree import N300, make_host

FAKE_TT_SMI = textwrap.dedent("""\
    #!/bin/sh
    # A stand-in for tt-smi: records its arguments, then acts on card $2 as FAKE_TT_SMI_MODE says.
    echo "$@" >> "$FAKE_TT_SMI_LOG"
    beat="$FAKE_TT_SMI_ROOT/sys/class/tenstorrent/tenstorrent!$2/tt_heartbeat"
    case "$FAKE_TT_SMI_MODE" in
      fail) echo "reset failed: PCIe link down" >&2; exit 1 ;;
      dead) exit 0 ;;
      revive) (i=1; while [ $i -lt 100 ]; do echo $i > "$beat.tmp"; mv "$beat.tmp" "$beat"; i=$((i+1)); sleep 0.1; done) \\
                </dev/null >/dev/null 2>&1 &
              exit 0 ;;
    esac
""")


@pytest.fixture
def card_host(tmp_path, monkeypatch):
    """Two n300 cards, a fake tt-smi first on PATH, and what it did."""
    tree = make_host(tmp_path / "root", [N300(), N300()])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tt-smi").write_text(FAKE_TT_SMI)
    (bin_dir / "tt-smi").chmod(0o755)
    log = tmp_path / "tt-smi.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TT_SMI_LOG", str(log))
    monkeypatch.setenv("FAKE_TT_SMI_ROOT", str(tree.root))
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "revive")
    tree.log = log
    return tree


def scheduler(tree, state_dir, **kw):
    kw = {"reset_after_crash": True, "reset_tool": "tt-smi", "reset_verify_timeout": 1.0, **kw}
    return Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice", **kw)


def killed_holder(tree, state_dir) -> tuple[str, int]:
    """A process that leases card 0 and is then killed with SIGKILL: the lease id and the card."""
    code = textwrap.dedent(f"""
        import time
        from jupyter_tt.devices import SysfsInventory
        from jupyter_tt.scheduler import Scheduler
        lease = Scheduler(SysfsInventory({str(tree.root)!r}), {str(state_dir)!r}, user="carol").acquire(1, timeout=30)
        print(lease.id, lease.devices[0].id, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lease_id, device = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return lease_id, int(device)


def state_of(s, device_id):
    return next(d for d in s.device_states() if d["id"] == device_id)


def ran(tree) -> list[str]:
    return tree.log.read_text().splitlines() if tree.log.exists() else []


def test_a_killed_holders_card_is_reset_alone_and_leased_again_only_once_its_heartbeat_advances(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    lease_id, card = killed_holder(card_host, state_dir)
    assert lease_id in s.reconcile()
    assert state_of(s, card)["state"] == "resetting" and "exited" in state_of(s, card)["reset"]["reason"]
    waiting = s.submit(2)  # both cards: one is out of the pool until its reset
    assert isinstance(waiting, Waiting)
    assert s.run_resets() == [card]
    assert ran(card_host) == [f"-r {card}"]  # that card only: tt-smi -r with no device resets every board
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
    waiting = s.submit(2)
    assert isinstance(waiting, Waiting)  # still out of the pool
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "revive")  # fixed by hand: reset it again
    assert s.retry_reset(card) and s.run_resets() == [card]
    deadline = time.monotonic() + 10
    while not isinstance(s.check(waiting.request_id), Lease):
        assert time.monotonic() < deadline, state_of(s, card)
        time.sleep(0.2)


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


def test_a_released_lease_needs_no_reset(card_host, state_dir):
    s = scheduler(card_host, state_dir)
    lease = s.acquire(1)
    s.release(lease.id)
    s.reconcile()
    assert s.run_resets() == [] and ran(card_host) == []
    assert {d["state"] for d in s.device_states()} == {"free"}


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
    assert "install tt-smi (pip install tt-smi) or tt-umd" in state_of(s, card)["problem"]


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
    from jupyter_servers import wait_until

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

            return next(d["state"] for d in ServiceClient(str(svc.socket)).report()["devices"] if d["id"] == card)

        wait_until(lambda: ran(card_host) == [f"-r {card}"], timeout=30, message="the service to reset the card")
        wait_until(lambda: state() == "free", timeout=30, message="the card back in the pool")
