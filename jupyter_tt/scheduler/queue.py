"""Who is served next, and with what: the queue's order and one pass's grants, as pure functions.

The order is fair between users: whoever holds fewer devices goes first, then first come.

Granting follows that order with backfill, as Slurm's backfill scheduler does: a request that
cannot be met now does not keep later ones waiting if they can be met without delaying it. Leases
have no end time, so "without delaying it" cannot be judged by durations, as Slurm does; instead a
request that waits *reserves* the free cards of the one card type it will be met on (the type it
lacks the fewest cards of), and later requests may take any other free card. The head therefore
never waits longer because someone behind it was served, and a request for another card type, or
one whose ``any`` the head's type does not serve, goes at once.

A request over its user's quota reserves nothing: it waits for that user's own leases to end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..devices import Device
from .placement import place, types_for


@dataclass(frozen=True, kw_only=True)
class Ask:
    """A waiting request, as the queue sees it."""

    request_id: str
    user: str
    devices: int
    card_type: str  # a card type, or "any"
    requested_at: float
    quota: int = 0  # the most devices its user may hold at once; 0: no quota


@dataclass(frozen=True, kw_only=True)
class Reservation:
    """Free cards set aside for a request that waits for more of them to free up."""

    card_type: str
    devices: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one pass does: the grants in the order made, and what the waiting requests keep."""

    order: tuple[str, ...] = ()  # every request id, in ``fair_order``
    grants: dict[str, tuple[Device, ...]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    over_quota: frozenset[str] = frozenset()


def fair_order(asks: Iterable[Ask], held: Mapping[str, int]) -> list[Ask]:
    """``asks`` in the order they are served: fewer devices held by their user first, then first come."""
    return sorted(asks, key=lambda a: (held.get(a.user, 0), a.requested_at, a.request_id))


def plan(asks: Iterable[Ask], *, free: Iterable[Device], usable: Iterable[Device], held: Mapping[str, int]) -> Plan:
    """The grants and reservations of one pass.

    ``asks`` in any order (they are put in ``fair_order``); ``free``: the devices no lease, reset or
    outside holder has; ``usable``: every device a lease may ever get (healthy, not failed in a reset),
    held or not; ``held``: devices each user holds now. Requests that can never be met on ``usable``
    are the caller's to refuse first: here they reserve nothing and are never granted.
    """
    usable = list(usable)
    pool = sorted(free, key=lambda d: d.id)
    held = Counter(held)
    grants: dict[str, tuple[Device, ...]] = {}
    reservations: dict[str, Reservation] = {}
    over_quota = set()
    order = fair_order(asks, held)
    for ask in order:
        if ask.quota and held[ask.user] + ask.devices > ask.quota:
            over_quota.add(ask.request_id)
            continue
        chosen = place(pool, ask.devices, ask.card_type)
        if chosen is not None:
            grants[ask.request_id] = tuple(chosen)
            taken = {d.id for d in chosen}
            pool = [d for d in pool if d.id not in taken]
            held[ask.user] += len(chosen)
            continue
        kind = _meeting_type(ask, pool, usable)
        if kind is None:
            continue
        kept = tuple(d.id for d in pool if d.card_type == kind and d.healthy)  # fewer than it needs, or it would be placed
        if kept:
            reservations[ask.request_id] = Reservation(card_type=kind, devices=kept)
            pool = [d for d in pool if d.card_type != kind]
    return Plan(order=tuple(a.request_id for a in order), grants=grants, reservations=reservations, over_quota=frozenset(over_quota))


def _meeting_type(ask: Ask, pool: list[Device], usable: list[Device]) -> str | None:
    """The card type ``ask`` will be met on: of those with enough usable cards, the one it lacks the
    fewest free cards of (ties: the smaller type, as ``types_for`` prefers). None if none can meet it."""
    kinds = [t for t in types_for(ask.card_type, usable) if sum(d.card_type == t for d in usable) >= ask.devices]
    if not kinds:
        return None
    free = Counter(d.card_type for d in pool if d.healthy)
    return min(kinds, key=lambda t: (ask.devices - free[t], kinds.index(t)))
