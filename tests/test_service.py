"""The scheduler service with real OS users: identity from the kernel, nothing to freeze, forge or break.

Each test runs ``jupyter tt scheduler`` as root on a simulated inventory and the users' processes as
``tt-alice`` and ``tt-bob`` (tests/support/os_users.py creates them; without root the tests skip).
"""

from __future__ import annotations

import json
import os
import socket
import time

from tests.support.jupyter_servers import wait_until
from tests.support.os_users import PYTHON, ask, flooder, holder, tt


def test_the_service_names_each_caller_by_their_uid_whatever_their_environment_says(service, alice):
    svc = service()
    out = alice.python("""
        from jupyter_tt.scheduler import open_scheduler
        s = open_scheduler()
        lease = s.acquire(1, timeout=10)
        print(s.user, lease.user, s.mode)
    """, env=alice.env(JUPYTER_TT_SCHEDULER=svc.address, JUPYTERHUB_USER="tt-bob", USER="tt-bob", LOGNAME="tt-bob"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tt-alice", "tt-alice", "service"]


def test_another_user_can_neither_release_nor_change_nor_read_a_lease(service, alice, bob):
    svc = service()
    proc, lease_id = holder(alice, svc)
    try:
        # The CLI, claiming to be alice through the environment:
        env = bob.env(JUPYTER_TT_SCHEDULER=svc.address, JUPYTERHUB_USER="tt-alice", USER="tt-alice")
        out = bob.tt("release", lease_id, env=env)
        assert out.returncode == 2 and "belongs to tt-alice: only they can release it" in out.stderr, out.stderr
        # The socket, directly:
        for op, args in [("release", {"lease_id": lease_id}), ("detach_kernel", {"lease_id": lease_id}),
                         ("attach_kernel", {"lease_id": lease_id, "pid": os.getpid()})]:
            answer = ask(bob, svc, op, **args)
            assert answer["error"]["status"] == 403, (op, answer)
        # The state: a private folder of the service's, which bob cannot enter.
        out = bob.python(f"import os; print(os.listdir({str(svc.state_dir)!r}))")
        assert "PermissionError" in out.stderr
        assert oct(svc.state_dir.stat().st_mode & 0o777) == "0o700"
        assert {oct(p.stat().st_mode & 0o777) for p in svc.state_dir.iterdir()} == {"0o600"}
        # What bob sees of alice's lease: who holds which devices since when, nothing more.
        [seen] = ask(bob, svc, "leases")["result"]
        public = seen["$lease"]
        assert public["user"] == "tt-alice" and public["owned"] is False
        assert public["kernel_id"] is None and public["notebook"] is None and public["pid"] == 0 and public["server"] == ""
        [mine] = ask(alice, svc, "leases")["result"]
        assert mine["$lease"]["pid"] == proc.pid and mine["$lease"]["owned"] is True
        # And the lease is intact.
        assert ask(alice, svc, "get_lease", lease_id=lease_id)["result"]["$lease"]["id"] == lease_id
    finally:
        proc.kill()


def test_no_user_can_freeze_the_scheduler_for_the_others(service, alice, bob):
    svc = service()
    # bob holds open every connection he may, each with half a request line, and tries the state files.
    hog = bob.popen([PYTHON, "-c", f"""
import socket, time
held = []
for _ in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect({str(svc.socket)!r})
    s.sendall(b'{{"id": 1, "op": "leas')
    held.append(s)
print("holding", flush=True)
time.sleep(600)
"""])
    assert hog.stdout.readline().strip() == "holding"
    try:
        started = time.monotonic()
        proc, lease_id = holder(alice, svc)
        out = tt(alice, svc, "devices", timeout=20)
        elapsed = time.monotonic() - started
        assert out.returncode == 0 and "leased" in out.stdout, out.stderr
        assert elapsed < 5, f"alice waited {elapsed:.1f} s"
        proc.kill()
    finally:
        hog.kill()


def test_malformed_requests_are_refused_one_by_one_and_everything_keeps_working(service, bob, alice):
    svc = service()
    proc, lease_id = holder(alice, svc)
    try:
        lines = [b"not json", b"[1, 2]", b'{"op": 5}', b'{"id": 1, "op": "drop_tables"}', b'{"id": 1, "op": "submit", "args": []}',
                 b'{"id": 1, "op": "submit", "args": {"count": "x"}}', b'{"id": 1, "op": "submit", "args": {"count": 1, "card_type": 5}}',
                 b'{"id": 1, "op": "submit", "args": {"count": 1, "surprise": true}}',
                 b'{"id": 1, "op": "attach_kernel", "args": {"lease_id": {}, "pid": -1}}',
                 b'{"id": 1, "op": "check", "args": {"request_id": "req-0"}}',
                 b'{"id": 1, "op": "timeout_message", "args": {"waiting": {"$waiting": {"no": 1}}}}',
                 b'{"id": 1, "op": "submit", "args": {"count": 1, "kernel_id": "' + b"k" * 5000 + b'"}}']
        code = f"""
import socket, sys, json
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({str(svc.socket)!r})
f = s.makefile("rb")
for line in {lines!r}:
    s.sendall(line + b"\\n")
    print(json.loads(f.readline())["error"]["message"][:80])
"""
        out = bob.python(code)
        assert out.returncode == 0, out.stderr
        answers = out.stdout.splitlines()
        assert len(answers) == len(lines) and all(answers), answers
        assert "unknown operation 'drop_tables'" in answers[3]
        assert "whole number of devices" in answers[5] and "unknown card type" in answers[6]
        # A line over the limit closes only that connection.
        big = bob.python(f"""
import socket
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({str(svc.socket)!r})
try:
    s.sendall(b"x" * (2 << 20) + b"\\n")
except BrokenPipeError:  # the service answered and closed before the rest arrived
    pass
print(s.makefile().readline()[:200])
""")
        assert "longer than" in big.stdout, big.stdout + big.stderr
        # Everyone is still served.
        assert ask(alice, svc, "get_lease", lease_id=lease_id)["result"]["$lease"]["id"] == lease_id
        assert tt(bob, svc, "devices").returncode == 0
        assert svc.proc.poll() is None
    finally:
        proc.kill()


def test_the_service_learns_of_a_holders_death_at_once(service, alice):
    svc = service(config="c.TTSettings.watch_interval = 600.0\n")  # no periodic pass: only the pidfd can tell
    proc, lease_id = holder(alice, svc)
    proc.kill()
    proc.wait()
    started = time.monotonic()
    wait_until(lambda: ask(alice, svc, "get_lease", lease_id=lease_id)["result"] is None, timeout=5, message="the lease to end")
    assert time.monotonic() - started < 2


def test_killing_the_service_keeps_every_lease_and_its_restart_recovers_them(service, alice, bob):
    svc = service()
    kept, kept_id = holder(alice, svc)
    died, died_id = holder(bob, svc)
    svc.kill()
    assert kept.poll() is None  # the kernel (here: the holder) goes on with its devices
    died.kill()
    died.wait()
    svc.start()
    leases = {lease["$lease"]["id"] for lease in ask(alice, svc, "leases")["result"]}
    assert leases == {kept_id}  # alice's recovered; bob's holder died meanwhile, so his ended at the restart
    history = ask(bob, svc, "history")["result"]["$page"]["items"]
    assert any(h["lease_id"] == died_id and "exited" in h["end_reason"] for h in history)
    kept.kill()


def test_the_socket_is_open_to_everyone_and_the_state_to_no_one(service):
    svc = service()
    assert oct(svc.socket.stat().st_mode & 0o777) == "0o666"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(svc.socket))
    assert oct(svc.state_dir.stat().st_mode & 0o777) == "0o700"
    from jupyter_tt.scheduler.client import ServiceClient

    where = ServiceClient(str(svc.socket)).report().scheduler  # the report says where each is
    assert (where.state_dir, where.socket) == (str(svc.state_dir), str(svc.socket))


def test_a_proc_that_hides_other_users_processes_ends_no_lease(service, alice, bob):
    """The service as a dedicated user (here tt-bob) under hidepid=invisible sees none of alice's
    processes in /proc: they count as alive while they exist (kill(pid, 0)), and end when they exit."""
    svc = service(as_user=bob, hidepid=True)
    proc, lease_id = holder(alice, svc)
    try:
        # What the service's /proc shows of alice's holder: nothing.
        assert bob.run(["test", "-e", f"/proc/{proc.pid}"], hidepid=True).returncode == 1
        assert bob.run(["test", "-e", f"/proc/{proc.pid}"]).returncode == 0  # outside such a namespace bob sees it
        time.sleep(1.5)  # passes run every second
        assert ask(alice, svc, "reconcile")["result"] == []
        assert ask(alice, svc, "get_lease", lease_id=lease_id)["result"]["$lease"]["id"] == lease_id
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: ask(alice, svc, "get_lease", lease_id=lease_id)["result"] is None, timeout=5, message="the lease to end")


def users_server(user, svc, name):
    """A real Jupyter server of ``user`` whose kernels lease through the service, with an n300 kernelspec."""
    from tests.support.jupyter_servers import Server

    env = {"JUPYTER_TT_SCHEDULER": svc.address, "JUPYTER_DATA_DIR": f"{user.home}/data",
           "JUPYTER_RUNTIME_DIR": f"{user.home}/runtime", "JUPYTER_CONFIG_DIR": f"{user.home}/config"}
    installed = user.tt("kernelspec", "install", "--user", "--devices", "1", "--card-type", "n300", "--name", "tt-n300",
                        env=user.env(**env))
    assert installed.returncode == 0, installed.stderr
    return Server(None, env, name=name, user=user).start()


def test_jupyter_servers_of_two_users_lease_through_the_service_and_see_only_whose_devices(service, alice, bob):
    svc = service()
    a, b = users_server(alice, svc, "alice"), users_server(bob, svc, "bob")
    try:
        kernel = a.start_kernel("tt-n300")
        [lease] = a.leases()
        assert lease["user"] == "tt-alice" and lease["kernel_id"] == kernel and lease["pid"] > 0
        from tests.support.jupyter_servers import kernel_environ

        assert kernel_environ(lease["pid"])["JUPYTER_TT_SCHEDULER"] == svc.address
        # bob's server: who holds which devices since when; no kernel, process or notebook of alice's.
        [seen] = b.leases()
        assert set(seen) - {"notebook_path"} == {"id", "devices", "user", "since"} and seen["user"] == "tt-alice"
        devices = b.json("/jupyter-tt/api/devices")
        held = next(d for d in devices["devices"] if d["lease_id"] == lease["id"])
        assert held["user"] == "tt-alice" and held["kernel_id"] is None and held["notebook"] is None
        assert b.http.delete(f"/jupyter-tt/api/leases/{lease['id']}").status_code == 403
        a.shutdown_kernel(kernel)
        wait_until(lambda: a.leases() == [], timeout=10, message="the lease to end with the kernel")
    finally:
        a.stop()
        b.stop()


def test_usage_csv_through_the_service_lists_every_users_leases_for_reports(service, alice, bob):
    svc = service()
    proc, lease_id = holder(alice, svc)
    try:
        out = bob.tt("usage", "--csv", env=bob.env(JUPYTER_TT_SCHEDULER=svc.address))
        assert out.returncode == 0, out.stderr
        header, *rows = [line.split(",") for line in out.stdout.splitlines()]
        assert header[:2] == ["lease_id", "user"]
        assert [(r[0], r[1], r[6]) for r in rows] == [(lease_id, "tt-alice", "")]  # held: no end yet
    finally:
        proc.kill()


def test_the_shared_host_example_config_sets_fair_quotas_and_the_idle_policy(service):
    from pathlib import Path

    import pytest

    from jupyter_tt.errors import RequestError
    from jupyter_tt.scheduler.client import ServiceClient

    example = Path(__file__).parent.parent / "examples" / "shared-host" / "scheduler_config.py"
    svc = service(inventory="simulated:n300x4", config=example.read_text())
    client = ServiceClient(str(svc.socket))
    assert client.idle_policy == (1800.0, 300.0)  # what every Jupyter server on the host follows
    with pytest.raises(RequestError, match="over .*quota of 2"):
        client.submit(3, "n300")
    lease = client.acquire(2, "n300", timeout=10)
    assert len(lease.devices) == 2
    client.release(lease.id)


# ---------------------------------------------------------------------- a shared host under load

def test_one_users_flood_of_reads_is_turned_away_and_never_slows_anothers_lease_operations(service, alice, bob):
    svc = service(inventory="simulated:n300x4")
    proc, lease_id = holder(alice, svc)
    flood = flooder(bob, svc, seconds=8)
    try:
        # alice's client gives up after 5 s (its default is 10 s): on a first come, first served service
        # her calls queued behind bob's 16 connections of reads, and took up to 12.9 s.
        out = alice.python(f"""
            import json, time
            from jupyter_tt.scheduler.client import ServiceClient
            c = ServiceClient({str(svc.socket)!r}, timeout=5)
            worst = 0.0
            for _ in range(20):
                started = time.monotonic()
                assert c.get_lease({lease_id!r}).id == {lease_id!r}
                c.report()
                worst = max(worst, time.monotonic() - started)
            print(json.dumps({{"worst": worst}}))
        """, timeout=60)
        assert out.returncode == 0, out.stderr
        counts = json.loads(flood.stdout.read().splitlines()[-1])
        assert counts["busy"] > 0 and counts["busy"] == counts["retry"], counts  # over his budget: 429, retry in N s
        assert counts["answers"] > counts["busy"]  # and within it, served
    finally:
        flood.kill()
        proc.kill()


def test_a_user_who_churns_leases_is_held_to_the_hosts_lease_rate(service, bob):
    svc = service(config="c.TTSettings.lease_burst = 5\nc.TTSettings.lease_rate = 1.0\n")
    out = bob.python(f"""
        import time
        from jupyter_tt.scheduler.client import ServiceClient
        c = ServiceClient({str(svc.socket)!r})
        started = time.monotonic()
        for _ in range(12):  # the client asks again when refused: it is slowed to the rate, not failed
            c.release(c.submit(1).id)
        print(time.monotonic() - started)
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 6.0  # 5 at once, then one a second: 7 more take at least 7 s, less a tick
    refused = ask(bob, svc, "submit", count=1)["error"]  # one call on the socket: refused, with when to retry
    assert refused["status"] == 429 and refused["retry_after"] >= 1, refused
    assert "you may make 1 a second on this host: retry in 1 s" in refused["message"], refused


def test_a_history_limit_outside_its_range_is_a_400_and_large_usage_arrives_whole_in_pages(service, alice, bob):
    svc = service(inventory="simulated:n300x4")
    assert ask(bob, svc, "history", limit=-1)["error"] == {
        "type": "RequestError", "status": 400,
        "message": "limit must be a whole number from 1 to 1000, not -1: page through longer lists"}
    # Root (exempt from the lease rate) fills the history: more than the old 1 MiB answer limit held.
    from jupyter_tt.scheduler.client import ServiceClient

    root = ServiceClient(str(svc.socket))
    for i in range(3500):
        lease = root.submit(1)
        root.release(lease.id, reason=("=HYPERLINK(\"http://evil\")" if i == 0 else "y" * 200))
    out = bob.tt("usage", "--csv", env=bob.env(JUPYTER_TT_SCHEDULER=svc.address), timeout=120)
    assert out.returncode == 0, out.stderr
    import csv
    import io

    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert len(rows) == 1 + 3500 and len(out.stdout) > 1 << 20
    assert rows[1][7].startswith("'=HYPERLINK")  # a spreadsheet shows it as text, never runs it
    # The same connection goes on answering the right requests afterwards.
    out = bob.python(f"""
        from jupyter_tt.scheduler.client import ServiceClient
        c = ServiceClient({str(svc.socket)!r})
        print(len(c.usage_records(0.0)), len(c.history(1000)), c.leases())
    """, timeout=120)
    assert out.stdout.split() == ["3500", "1000", "[]"], out.stderr


def test_other_users_see_that_a_lease_ended_but_not_the_process_ids_in_why(service, alice, bob):
    svc = service()
    proc, lease_id = holder(alice, svc)
    proc.kill()
    proc.wait()
    wait_until(lambda: not ask(alice, svc, "leases")["result"], timeout=10, message="alice's lease to end")
    [mine] = ask(alice, svc, "history")["result"]["$page"]["items"]
    [theirs] = ask(bob, svc, "history")["result"]["$page"]["items"]
    assert str(proc.pid) in mine["end_reason"]
    assert str(proc.pid) not in theirs["end_reason"] and "exited" in theirs["end_reason"]
    assert theirs["pid"] is None and theirs["server"] == ""


def test_connections_that_close_before_their_answer_leave_no_traceback_in_the_log(service, bob):
    svc = service()
    out = bob.python(f"""
        import socket
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX); s.connect({str(svc.socket)!r})
            s.sendall(b'{{"id": 1, "op": "report"}}\\n{{"id": 2, "op": "leases"}}\\n')
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
            s.close()
    """)
    assert out.returncode == 0, out.stderr
    assert tt(bob, svc, "devices").returncode == 0
    assert "Traceback" not in svc.log_text() and svc.proc.poll() is None


def test_on_a_service_host_auto_means_the_service_even_while_its_socket_is_missing(tmp_path, monkeypatch):
    from jupyter_tt import config

    monkeypatch.setattr(config, "SERVICE_SOCKET", str(tmp_path / "run/scheduler.sock"))
    monkeypatch.setattr(config, "SERVICE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(config, "SERVICE_UNITS", (str(tmp_path / "jupyter-tt-scheduler.service"),))
    settings = config.TTSettings(scheduler="auto")
    assert settings.scheduler_socket() is None  # a laptop: personal mode
    (tmp_path / "jupyter-tt-scheduler.service").write_text("[Unit]\n")
    assert settings.scheduler_socket() == str(tmp_path / "run/scheduler.sock")  # installed: never personal


def test_a_client_waits_for_a_restarting_service_and_then_says_how_to_start_it(service):
    import threading

    import pytest

    from jupyter_tt.errors import SchedulerUnavailable
    from jupyter_tt.scheduler.client import ServiceClient

    svc = service()
    svc.kill()  # mid-restart: its socket is there, nobody listens
    restart = threading.Timer(1.5, svc.start)
    restart.start()
    started = time.monotonic()
    client = ServiceClient(str(svc.socket), timeout=20)
    assert client.leases() == [] and time.monotonic() - started >= 1.0
    restart.join()
    svc.stop()
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable, match=r"within 2 s: start it \(systemctl start jupyter-tt-scheduler\)"):
        ServiceClient(str(svc.socket), timeout=2)
    assert time.monotonic() - started >= 1.5
