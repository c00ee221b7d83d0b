"""A simulated inventory from a spec string, for machines with no card (laptops, Binder, CI).

Every device and every output from it is labelled simulated.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace

from ..errors import ConfigError
from .base import CARD_TYPES, CHIPS_PER_CARD, Device, InventoryBackend, Telemetry

DEFAULT_SPEC = "n300x4"
_ITEM = re.compile(r"^(?P<card>[a-z0-9-]+?)(?:x(?P<count>\d+))?$")


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """``"n150x2,n300"`` → ``[("n150", 2), ("n300", 1)]``; a ConfigError says what is wrong."""
    example = "use e.g. 'n300x4' or 'n150x2,n300x1'"
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"empty simulated inventory spec: {example}")
    parsed = []
    for item in items:
        match = _ITEM.match(item.lower())
        if not match:
            raise ConfigError(f"cannot read {item!r} in simulated inventory spec {spec!r}: {example}")
        card, count = match["card"], int(match["count"] or 1)
        if card not in CARD_TYPES:
            raise ConfigError(
                f"unknown card type {card!r} in simulated inventory spec {spec!r}; "
                f"known types: {', '.join(CARD_TYPES)}"
            )
        if not 1 <= count <= 4096:
            raise ConfigError(f"{item!r}: a simulated inventory holds 1 to 4096 cards of a type; {example}")
        parsed.append((card, count))
    return parsed


class SimulatedInventory(InventoryBackend):
    """Cards as the spec says, on made-up PCI addresses, with slowly varying made-up telemetry.

    Hosts with four or more cards split them over two NUMA nodes, like a LoudBox.
    """

    kind = "simulated"

    def __init__(self, spec: str = DEFAULT_SPEC):
        self.cards = parse_spec(spec)
        self.spec = ",".join(f"{card}x{count}" for card, count in self.cards)
        types = [card for card, count in self.cards for _ in range(count)]
        per_node = math.ceil(len(types) / 2) if len(types) >= 4 else len(types)
        self._static = [
            Device(
                id=i,
                path=f"/dev/tenstorrent/{i}",
                bdf=f"0000:{(i // 32) + 1:02x}:{i % 32:02x}.0",
                card_type=card,
                chips=CHIPS_PER_CARD[card],
                numa_node=i // per_node,
                serial=f"SIM{i:05d}",
                asic_id=f"{0x51AD0000 + i:016x}",
                firmware={"fw_bundle": "simulated", "arc_fw": "simulated", "eth_fw": "simulated"},
                simulated=True,
            )
            for i, card in enumerate(types)
        ]

    @property
    def key(self) -> str:
        return f"simulated-{self.spec}"

    def describe(self) -> dict:
        return {**super().describe(), "spec": self.spec, "label": f"SIMULATED inventory ({self.spec}): no real card"}

    def devices(self) -> list[Device]:
        now = time.time()
        return [
            replace(static, telemetry=_made_up_telemetry(static.id, static.card_type, now)) for static in self._static
        ]


def _made_up_telemetry(i: int, card: str, now: float) -> Telemetry:
    wave = math.sin(now / 20.0 + i)
    watts = 60.0 if card == "n300" else 35.0
    return Telemetry(
        temperature_c=round(45.0 + 4.0 * wave, 1),
        temperature_max_c=90.0,
        power_w=round(watts + 5.0 * wave, 1),
        current_a=round((watts + 5.0 * wave) / 0.85, 1),
        voltage_v=0.85,
        aiclk_mhz=1000.0,
        axiclk_mhz=960.0,
        arcclk_mhz=540.0,
        heartbeat=int(now * 10),
    )
