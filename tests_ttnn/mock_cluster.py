"""Cluster descriptors for ttnn's mock cluster mode (``TT_METAL_MOCK_CLUSTER_DESC_PATH``), written
for a list of Wormhole cards the way tt-umd describes a real host: one chip per n150, two per n300
(the PCIe-attached "L" chip and the "R" chip reached over two ethernet links), a board per card.
"""

from __future__ import annotations

from pathlib import Path

import yaml

#: tt-umd reads the board type from bits 36+ of the board id.
BOARD_ID_PREFIX = {"n150": 0x100018, "n300": 0x100014}
CHIPS = {"n150": 1, "n300": 2}


def descriptor(cards: list[tuple[str, str]]) -> dict:
    """``cards``: (card type, PCI BDF) per card."""
    arch, chips, ids, mmio, harvesting, boards, asic, bdfs, links = {}, {}, {}, [], {}, [], {}, {}, []
    chip = 0
    for i, (kind, bdf) in enumerate(cards):
        card_chips = list(range(chip, chip + CHIPS[kind]))
        for j, c in enumerate(card_chips):
            arch[c] = "wormhole_b0"
            chips[c] = [c, 0, 0, 0]
            ids[c] = 0x1000 + c
            harvesting[c] = {"noc_translation": True, "harvest_mask": 1, "dram_harvesting_mask": 0,
                             "eth_harvesting_mask": 0, "pcie_harvesting_mask": 0, "l2cpu_harvesting_mask": 0}
            asic[c] = j
        mmio.append({card_chips[0]: i})
        bdfs[card_chips[0]] = bdf
        if kind == "n300":
            left, right = card_chips
            links += [[{"chip": left, "chan": 8}, {"chip": right, "chan": 0}],
                      [{"chip": left, "chan": 9}, {"chip": right, "chan": 1}]]
        boards.append([{"board_id": (BOARD_ID_PREFIX[kind] << 36) | (i + 1)}, {"board_type": kind}, {"chips": card_chips}])
        chip += len(card_chips)
    return {
        "arch": arch, "chips": chips, "chip_unique_ids": ids, "ethernet_connections": links,
        "ethernet_connections_to_remote_devices": [], "chips_with_mmio": mmio, "io_device_type": "PCIe",
        "harvesting": harvesting, "boards": boards, "asic_locations": asic, "chip_pci_bdfs": bdfs,
    }


def write(path: Path, cards: list[tuple[str, str]]) -> Path:
    path.write_text(yaml.safe_dump(descriptor(cards), sort_keys=False))
    return path
