"""Write kernelspecs whose kernels ask ``tt-provisioner`` for devices."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from ..devices import CHIPS_PER_CARD
from ..errors import ConfigError
from ..scheduler import ANY, DeviceRequest


def kernelspec(devices: int, card_type: str = ANY, wait_timeout: float | None = None, display_name: str | None = None) -> dict:
    """The kernel.json of an ipykernel that asks for ``devices`` of ``card_type``."""
    request = DeviceRequest.parse(devices, card_type, what="--devices", error=ConfigError)
    devices, card_type = request.devices, request.card_type
    config: dict = {"devices": devices, "card_type": card_type}
    if wait_timeout is not None:
        config["wait_timeout"] = wait_timeout
    return {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name or default_display_name(devices, card_type),
        "language": "python",
        "metadata": {
            "debugger": True,
            "kernel_provisioner": {"provisioner_name": "tt-provisioner", "config": config},
        },
    }


#: The generic kernelspec: it starts on no device, and the user picks devices from JupyterLab.
GENERIC_NAME = "tenstorrent"
GENERIC_DISPLAY_NAME = "Tenstorrent (choose devices in the notebook)"


def default_display_name(devices: int, card_type: str) -> str:
    if devices == 0:
        return "Python 3 (no Tenstorrent device)"
    if card_type == "n300" and devices == 4:
        return "Python 3 (LoudBox: 4× n300, 8 chips)"
    card = "device" if card_type == ANY else card_type
    n = devices * CHIPS_PER_CARD.get(card_type, 1)
    chips = f", {n} chip{'s' * (n > 1)}" if card_type != ANY else ""
    return f"Python 3 ({devices}× {card}{chips})"


def install(
    name: str,
    devices: int,
    card_type: str = ANY,
    *,
    wait_timeout: float | None = None,
    display_name: str | None = None,
    user: bool = False,
    prefix: str | None = None,
) -> str:
    """Install the spec as ``name``; returns the folder it was written to."""
    spec = kernelspec(devices, card_type, wait_timeout, display_name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(str(folder), name, user=user, prefix=prefix)
