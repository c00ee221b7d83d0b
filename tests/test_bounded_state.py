"""A shared host's scheduler under load: fair turns, bounded state, paged answers, no request that
waits for ever. The pure parts (fair queue, token bucket) alone; the rest on a real scheduler state.
The same attacks with real OS users against the service are in test_service.py."""

from __future__ import annotations

import logging
import os
import time

import pytest

from jupyter_tt.devices import SimulatedInventory, SysfsInventory
from jupyter_tt.errors import LeaseError, RequestError
from jupyter_tt.scheduler import Lease, Scheduler, Waiting
from jupyter_tt.scheduler.fairness import Busy, FairQueue, TokenBucket
from jupyter_tt.server.idle import IdleKernel, IdleReclaimer
from jupyter_tt.text import clean_label, csv_cell, printable
from tests.support.sysfs_tree import Card, make_host


def scheduler_for(state_dir, spec="n300x4", user="alice", **kw):
    return Scheduler(SimulatedInventory(spec), state_dir, user=user, **kw)


def test_the_fair_queue_serves_users_in_turn_however_many_calls_one_of_them_queued():
    q = FairQueue(per_user=100)
    for i in range(50):
        q.push("bob", f"bob-{i}")
    q.push("alice", "alice-0")
    q.push("carol", "carol-0")
    order = [q.pop()[1] for _ in range(5)]
    assert order == ["bob-0", "alice-0", "carol-0", "bob-1", "bob-2"]  # alice waits for one of bob's, not 50


def test_the_fair_queue_refuses_a_users_call_past_their_bound_and_takes_it_again_once_one_is_done():
    q = FairQueue(per_user=2)
    assert q.push("bob", 1) and q.push("bob", 2)
    assert not q.push("bob", 3)  # refused at once, nothing queued
    assert q.push("alice", 1)  # others are not affected
    assert q.push("service", 9, bounded=False)
    q.pop()
    q.done("bob")
    assert q.push("bob", 3)


def test_a_token_bucket_allows_a_burst_then_its_rate_and_says_when_to_retry():
    bucket = TokenBucket(burst=3, rate=2.0, what="lease requests")
    for _ in range(3):
        bucket.take("bob", now=100.0)
    with pytest.raises(Busy, match=r"may make 2 a second on this host: retry in 1 s") as refused:
        bucket.take("bob", now=100.0)
    assert refused.value.status_code == 429
    bucket.take("alice", now=100.0)  # a bucket per user
    bucket.take("bob", now=100.5)  # half a second refills one token
    with pytest.raises(Busy):
        bucket.take("bob", now=100.5)


def test_a_large_answer_is_charged_to_its_readers_bucket_as_a_list_is_in_kube_apiservers_fairness():
    bucket = TokenBucket(burst=10, rate=1.0, what="report requests")
    bucket.take("bob", now=0.0)
    bucket.charge("bob", 30, now=0.0)  # a page of a thousand entries: some calls' worth
    with pytest.raises(Busy, match=r"retry in 11 s"):  # in debt down to -10 at most: 11 s to one token again
        bucket.take("bob", now=0.0)
    bucket.take("alice", now=0.0)
    bucket.take("bob", now=11.0)


@pytest.mark.parametrize("limit", [-1, 0, 1001, "10", 2.5, True])
def test_a_history_limit_outside_1_to_1000_is_refused_with_the_range(state_dir, limit):
    with pytest.raises(RequestError, match="limit must be a whole number from 1 to 1000"):
        scheduler_for(state_dir).history(limit)


def test_history_and_usage_records_come_in_pages_that_together_hold_every_lease_once(state_dir):
    s = scheduler_for(state_dir)
    ids = []
    for _ in range(7):
        lease = s.acquire(1)
        ids.append(lease.id)
        s.release(lease.id)
    held = s.acquire(1)
    pages, cursor = [], None
    while True:
        page = s.history_page(3, before=cursor)
        pages.append([h["lease_id"] for h in page.items])
        if page.next is None:
            break
        cursor = page.next
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(sum(pages, [])) == sorted(ids)
    records, cursor = [], None
    while True:
        page = s.usage_records_page(0.0, after=cursor, limit=2)
        records += [r.lease_id for r in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert sorted(records) == sorted([*ids, held.id])
    assert sorted(r.lease_id for r in s.usage_records(0.0)) == sorted(records)  # the API pages for its callers
    with pytest.raises(RequestError, match="is not a cursor"):
        s.history_page(3, before="garbage")


def test_labels_are_bounded_and_lose_their_control_characters_on_the_way_in(state_dir):
    s = scheduler_for(state_dir)
    notebook = "/home/bob/" + "deep/" * 100 + "\x1b[2J\x1b[31mpwned.ipynb"
    lease = s.acquire(1, kernel_id="k-\x07\x1b]0;title\x07", notebook=notebook)
    stored = s.get_lease(lease.id)
    assert len(stored.notebook) <= 256 and stored.notebook.endswith("pwned.ipynb") and "\x1b" not in stored.notebook
    assert "\x07" not in stored.kernel_id and "\x1b" not in stored.kernel_id
    with pytest.raises(RequestError, match="at most 256 characters"):
        s.submit(1, kernel_id="k" * 257)
    s.release(lease.id, reason="bye\x1b[2J" + "x" * 5000)
    [entry] = s.history(1)
    assert len(entry["end_reason"]) <= 300 and "\x1b" not in entry["end_reason"]


def test_the_history_keeps_at_most_its_rows_and_days_and_gives_the_space_back(state_dir):
    s = scheduler_for(state_dir, history_rows=5, history_days=1)
    for _ in range(12):
        s.release(s.acquire(1).id)
    s.db.execute("UPDATE history SET ended_at = ended_at - 3 * 86400 WHERE lease_id = (SELECT MIN(lease_id) FROM history)")
    assert s.prune() == 7  # one too old, then all but the newest 5
    assert len(s.history(1000)) == 5
    assert s.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental: the pages go back to the file system


def test_a_request_for_more_healthy_cards_than_the_host_has_is_refused_with_the_numbers(tmp_path, state_dir):
    tree = make_host(tmp_path, [Card(), Card(), Card(), Card(temperature_c=99.0)])
    s = Scheduler(SysfsInventory(str(tree.root)), state_dir, user="alice")
    with pytest.raises(RequestError, match=r"3 n300 that can be leased \(1 more unhealthy.*at most 3 n300"):
        s.submit(4, "n300")
    assert isinstance(s.submit(3, "n300"), Lease)


def test_a_waiting_request_that_a_card_turning_unhealthy_makes_impossible_ends_with_why_and_frees_the_queue(tmp_path, state_dir):
    tree = make_host(tmp_path, [Card(), Card(), Card(), Card()])
    alice, bob, carol = (Scheduler(SysfsInventory(str(tree.root)), state_dir, user=u) for u in ("alice", "bob", "carol"))
    held = alice.acquire(1)
    big = bob.submit(4)  # bob holds nothing: his request goes first
    assert isinstance(big, Waiting)
    small = carol.submit(1)
    assert isinstance(small, Waiting)  # behind bob's, though three cards are free
    tree.set(3, temperature_c=99.0)
    for s in (bob, carol):
        s.devices(fresh=True)
    with pytest.raises(RequestError, match=r"1 more unhealthy.*4 of one card type can never be leased at once"):
        bob.check(big.request_id)
    with pytest.raises(LeaseError, match="no longer queued"):
        bob.check(big.request_id)  # told once, and gone from the state
    assert isinstance(carol.check(small.request_id), Lease)  # the head is gone: carol goes
    alice.release(held.id)


def test_a_waiter_over_its_quota_does_not_make_an_idle_kernel_give_up_its_cards(state_dir):
    inventory = SimulatedInventory("n300x2")
    alice = Scheduler(inventory, state_dir, user="alice")
    bob = Scheduler(inventory, state_dir, user="bob", quota=2)
    mine, other = alice.acquire(1), alice.acquire(1)
    first, second = bob.submit(1), bob.submit(2)  # alone each is within 2: both wait
    assert isinstance(first, Waiting) and isinstance(second, Waiting)
    alice.release(other.id)
    first = bob.check(first.request_id)
    assert isinstance(first, Lease)  # with it, bob's second request is over his quota
    [waiting] = alice.queue()
    assert waiting.over_quota
    reclaimer = IdleReclaimer(timeout=1, grace=1)
    kernels = {mine.kernel_id or "": IdleKernel(kernel_id=mine.kernel_id or "", busy=False, idle_for=3600)}
    assert reclaimer.decide([mine], kernels, [waiting], free={"n300": 1}) == []  # taking alice's card would not help bob
    bob.release(first.id)
    [waiting] = alice.queue()
    assert not waiting.over_quota
    assert [a.kind for a in reclaimer.decide([mine], kernels, [waiting], free={"n300": 1})] == ["warn"]


def test_stored_text_is_escaped_for_terminals_and_spreadsheets():
    assert printable("ok \x1b[2J\u202e") == "ok \\x1b[2J\\u202e"
    assert printable({"a": ["\x07"]}) == {"a": ["\\x07"]}
    assert [csv_cell(v) for v in ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "fine", 3]] == \
        ["'=1+1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "fine", 3]
    assert clean_label("a\x1b[31mb\nc", 10) == "ab c" and clean_label("x" * 20, 10) == "…" + "x" * 9


def test_reports_read_through_their_own_connection_while_a_write_holds_the_state(state_dir):
    s = scheduler_for(state_dir)
    reader = s.reader()
    lease = s.acquire(1)
    with s._lock, s._write() as db:  # a lease operation in progress, its transaction open
        db.execute("UPDATE leases SET notebook='x' WHERE id=?", (lease.id,))
        started = time.monotonic()
        assert [x.id for x in reader.leases()] == [lease.id]  # not blocked, and sees the last commit
        assert time.monotonic() - started < 5
    with pytest.raises(Exception, match="readonly|read-only|query"):
        reader.reconcile()


def test_a_file_written_for_a_user_refuses_a_planted_link_and_a_folder_others_may_write(tmp_path):
    from jupyter_tt.errors import ConfigError
    from jupyter_tt.files import open_private, private_dir

    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = private_dir(tmp_path / "runtime", "the runtime folder", setting="JUPYTER_RUNTIME_DIR")
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    (folder / "jupyter-tt-serve-8000.log").symlink_to(victim)
    with pytest.raises(ConfigError, match="link someone planted"):
        open_private(folder / "jupyter-tt-serve-8000.log")
    assert victim.read_text() == "precious"
    fd = open_private(folder / "fresh.log")
    os.close(fd)
    assert oct((folder / "fresh.log").stat().st_mode & 0o777) == "0o600"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(ConfigError, match="writable by other users.*set JUPYTER_RUNTIME_DIR"):
        private_dir(shared, "the runtime folder", setting="JUPYTER_RUNTIME_DIR")


def test_each_ended_lease_gets_its_own_reason_in_its_event_however_many_ended_meanwhile(state_dir):
    from jupyter_tt.server.events import StateWatcher

    s = scheduler_for(state_dir, spec="n300x4")
    watched = s.acquire(1)
    watcher = StateWatcher(s)
    watcher.look()
    s.release(watched.id, reason="the one we watch")
    for _ in range(30):  # churn: more ended leases than the last look's history page held
        s.release(s.acquire(1).id, reason="churn")
    [ended] = [e for e in watcher.look() if e["action"] == "lease-ended"]
    assert ended["lease_id"] == watched.id and ended["reason"] == "the one we watch"


def test_a_tick_whose_reset_start_fails_does_not_stop_the_next_ticks(tmp_path):
    import asyncio

    from jupyter_tt.scheduler.loop import ReconcileLoop

    passes = []

    async def a_pass():
        passes.append(time.monotonic())
        if len(passes) % 2:
            raise RuntimeError("the scheduler did not answer")

    def failing_start():
        raise RuntimeError("the resetter is gone")

    failures: list[logging.LogRecord] = []

    class Recorded(logging.Handler):
        def emit(self, record):
            failures.append(record)

    owners_log = logging.getLogger("jupyter_tt.tests.a_servers_own_log")
    owners_log.addHandler(Recorded())

    async def ticking():
        loop = ReconcileLoop(a_pass, interval=0.02, run_resets=lambda: [], log=owners_log)  # the loop the service and servers share
        loop.start_resets = failing_start
        loop.start()
        await asyncio.sleep(0.5)
        loop.stop()

    asyncio.run(ticking())
    assert len(passes) >= 3  # before, the first failure ended the ticking for good
    assert failures and all("a reconcile pass failed" in f.getMessage() for f in failures)  # in the owner's log



def test_asks_for_a_pass_while_one_runs_fold_into_one_more_and_none_starts_once_stop_began():
    import asyncio

    from jupyter_tt.scheduler.loop import ReconcileLoop

    passes = []

    async def a_pass():
        passes.append(len(passes))
        await asyncio.sleep(0.05)

    async def asking():
        loop = ReconcileLoop(a_pass, interval=60)
        loop.start()
        first = asyncio.get_running_loop().create_task(loop.run_once())
        await asyncio.sleep(0.01)
        for _ in range(5):  # five changes while the first pass runs
            loop.soon()
        await asyncio.sleep(0.3)
        assert passes == [0, 1]
        loop.stop()
        loop.soon()
        await loop.run_once()
        await first
        assert passes == [0, 1]

    asyncio.run(asking())


def test_a_long_page_is_encoded_a_hundred_entries_at_a_time_into_the_same_json_as_one_call(tmp_path, monkeypatch):
    import json

    from jupyter_tt.scheduler import protocol

    s = scheduler_for(tmp_path / "state")
    for n in range(250):
        s.release(s.submit(1, notebook=f"n{n}.ipynb").id, reason=f"done (pid {n})")
    page = s.history_page(250, viewer="bob")
    whole = json.dumps({"id": 7, "result": protocol.encode(page)}, separators=(",", ":"))
    longest = []  # per call of the C encoder, the longest list it was given, at any depth
    encoder = json.dumps

    def longest_list(value):
        inner = value if isinstance(value, list) else value.values() if isinstance(value, dict) else ()
        return max([len(value) if isinstance(value, list) else 0, *map(longest_list, inner)])

    def dumps(value, **kwargs):
        longest.append(longest_list(value))
        return encoder(value, **kwargs)

    monkeypatch.setattr(protocol.json, "dumps", dumps)
    line = protocol.answer_line(7, page)
    monkeypatch.undo()
    assert line == (whole + "\n").encode()
    assert 0 < max(longest) <= protocol.DUMPS_CHUNK
    assert protocol.decode(json.loads(line)["result"]) == page
