"""The queue as a pure function: fair order, and backfill with a reservation for the request that waits."""

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler.queue import Ask, fair_order, plan

HOST = SimulatedInventory("n150x2,n300x4").devices()  # ids 0-1 are n150, 2-5 n300


def ask(request_id, devices, card_type="any", user=None, at=None, quota=0):
    return Ask(request_id=request_id, user=user or request_id, devices=devices, card_type=card_type,
               requested_at=at if at is not None else float(request_id[-1]), quota=quota)


def free_except(*held):
    return [d for d in HOST if d.id not in held]


def test_the_user_holding_fewer_devices_goes_first_then_the_first_to_ask():
    asks = [ask("r1", 1, user="alice"), ask("r2", 1, user="bob"), ask("r3", 1, user="carol")]
    assert [a.request_id for a in fair_order(asks, {"alice": 2, "bob": 0, "carol": 0})] == ["r2", "r3", "r1"]


def test_a_request_that_waits_keeps_the_free_cards_of_its_type_so_a_smaller_one_behind_cannot_delay_it():
    # alice holds three n300; the head wants all four, so it waits with the one free n300 kept for it
    result = plan([ask("r1", 4, "n300"), ask("r2", 1, "n300")], free=free_except(2, 3, 4), usable=HOST, held={"alice": 3})
    assert result.grants == {}
    assert result.reservations["r1"].card_type == "n300" and result.reservations["r1"].devices == (5,)
    assert "r2" not in result.reservations  # nothing of its type is left to keep


def test_a_request_behind_one_that_waits_is_served_at_once_from_cards_the_waiter_will_not_use():
    # "any" four can only ever be met on n300: it reserves those, and the n150s go to those behind it
    result = plan([ask("r1", 4), ask("r2", 1, "n150"), ask("r3", 1)], free=free_except(2, 3, 4), usable=HOST,
                  held={"alice": 3})
    assert list(result.reservations) == ["r1"] and result.reservations["r1"].devices == (5,)
    assert [d.id for d in result.grants["r2"]] == [0]
    assert [d.id for d in result.grants["r3"]] == [1]  # "any" too, but not on the n300 kept for r1


def test_an_any_request_that_two_types_could_meet_waits_on_the_one_it_lacks_fewest_of():
    # one n150 and three n300 are held: r1 (any 2) lacks one of each; the smaller type is kept for it
    tied = plan([ask("r1", 2), ask("r2", 1, "n300")], free=free_except(0, 2, 3, 4), usable=HOST, held={})
    assert tied.reservations["r1"].card_type == "n150" and tied.reservations["r1"].devices == (1,)
    assert [d.id for d in tied.grants["r2"]] == [5]
    # both n150 and three n300 are held: r1 lacks two n150 but one n300, so the last n300 is kept for it
    fewer = plan([ask("r1", 2), ask("r2", 1, "n300")], free=free_except(0, 1, 2, 3, 4), usable=HOST, held={})
    assert fewer.reservations["r1"].devices == (5,) and fewer.grants == {}


def test_the_head_is_granted_as_soon_as_its_cards_free_however_many_small_requests_keep_arriving():
    held = {2: "alice", 3: "alice", 4: "alice"}  # alice holds three n300; bob wants all four
    granted = None
    for step in range(6):
        asks = [ask("big", 4, "n300", user="bob", at=0.0)] + [ask(f"s{step}", 1, "n300", user=f"u{step}", at=1.0 + step)]
        result = plan(asks, free=free_except(*held), usable=HOST, held={"alice": len(held)})
        assert not any(d.card_type == "n300" for r, ds in result.grants.items() if r != "big" for d in ds)
        if "big" in result.grants:
            granted = step
            break
        held.popitem()  # one of alice's leases ends each step
    assert granted == 3


def test_a_request_over_its_users_quota_keeps_nothing_and_holds_no_one_up():
    result = plan([ask("r1", 2, "n300", user="bob", quota=2), ask("r2", 2, "n300", user="carol")],
                  free=free_except(2, 3), usable=HOST, held={"bob": 1})
    assert result.over_quota == {"r1"} and result.reservations == {}
    assert [d.id for d in result.grants["r2"]] == [4, 5]
