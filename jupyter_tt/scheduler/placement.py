"""Which free devices a request gets. Pure and deterministic: same inputs, same choice."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ..devices import CARD_TYPES, CHIPS_PER_CARD, Device
from ..errors import RequestError

ANY = "any"


def check_card_type(card_type: object) -> str:
    """The normalized card type (None: 'any'); a RequestError naming the valid ones otherwise."""
    normalized = (card_type or ANY).strip().lower() if isinstance(card_type, str) or card_type is None else None
    if normalized != ANY and normalized not in CARD_TYPES:
        raise RequestError(f"unknown card type {card_type!r}: ask for one of {', '.join(CARD_TYPES)} or 'any'")
    return normalized


def types_for(card_type: str, devices: Iterable[Device] = ()) -> list[str]:
    """Card types a request may be served from, in order of preference.

    A lease is always of one card type (ttnn opens one mesh of like chips). For 'any', smaller
    cards come first so that bigger ones stay free for those who need them; cards of unknown
    type are never handed out.
    """
    if card_type != ANY:
        return [card_type]
    present = {d.card_type for d in devices if d.card_type in CARD_TYPES}
    return sorted(present, key=lambda t: (CHIPS_PER_CARD[t], t))


def most_at_once(card_type: str, devices: Iterable[Device]) -> int:
    """The most devices one lease of ``card_type`` can have among ``devices``: a lease is of one card
    type, so for 'any' that is the count of the commonest type."""
    devices = list(devices)
    return max((sum(1 for d in devices if d.card_type == t) for t in types_for(card_type, devices)), default=0)


def place(free: list[Device], count: int, card_type: str) -> list[Device] | None:
    """``count`` healthy devices of one type from ``free``, or None when they are not there.

    Within a type, the devices come from one NUMA node when one has enough (the fullest node
    that fits, to keep the others whole); otherwise from the nodes with most free devices first.
    Ties go to the lower NUMA node and device id.
    """
    for kind in types_for(card_type, free):
        pool = sorted((d for d in free if d.card_type == kind and d.healthy), key=lambda d: d.id)
        if len(pool) < count:
            continue
        by_node: dict[int, list[Device]] = defaultdict(list)
        for device in pool:
            by_node[device.numa_node if device.numa_node is not None else -1].append(device)
        fitting = [node for node, ds in by_node.items() if len(ds) >= count]
        if fitting:
            node = min(fitting, key=lambda n: (len(by_node[n]), n))
            return by_node[node][:count]
        chosen: list[Device] = []
        for node in sorted(by_node, key=lambda n: (-len(by_node[n]), n)):
            chosen.extend(by_node[node][: count - len(chosen)])
            if len(chosen) == count:
                return sorted(chosen, key=lambda d: d.id)
    return None
