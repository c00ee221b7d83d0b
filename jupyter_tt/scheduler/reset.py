"""Resetting a card after its holder died: which tool, and the command that resets one card only.

A process killed or crashed mid-run can leave a card hung (its NoC, its firmware's queues) for the
next holder. The scheduler takes such a card out of the pool (``resetting``); this module resets it
with tt-umd's ``WarmReset`` (through a Python that imports ``tt_umd``, in a child process with a
deadline) or ``tt-smi -r``, whichever is installed. Both reset **every** board when given no
device, so every command here names its one device, and an empty list is refused before anything
runs.

How each tool names a card (tt-umd 0.9.14 and tt-smi 6.8.0, checked against both packages in
``tests/test_vendor_tools.py``):

- ``tt_umd.WarmReset.warm_reset(pci_device_ids=[N])`` takes the PCI index, N of
  ``/dev/tenstorrent/N``, and returns a bool: False is a failed reset (the child then exits 3).
- ``tt-smi -r`` reads a bare integer as a *UMD logical id*, an index into the BDF-sorted device
  list, which is not always N. The command here uses the device-node form,
  ``tt-smi -r /dev/tenstorrent/N``, with ``--no_reinit``: after a reset tt-smi otherwise runs a
  topology discovery (``TopologyDiscovery.discover``, tt-smi 6.8.0 ``reset.py`` ``pci_board_reset``)
  that opens every card it can see, other users' busy ones included, and can block for minutes.
  tt-smi ignores WarmReset's result either way, so the scheduler waits for the card's firmware
  heartbeat to advance before it counts a reset as done.

Both tools enumerate devices through ``TT_VISIBLE_DEVICES``, and tt-umd sends its reset ioctls
only to devices that are both visible and named (tt-umd ``device/pcie/pci_device.cpp``
``send_reset_ioctl_to_devices``, and it waits only for the visible ones to reappear:
``warm_reset.cpp`` ``warm_reset_arch_agnostic``, at 3ed9cb6). So the child sees exactly the card it
resets: ``TT_VISIBLE_DEVICES`` is that card's PCI BDF (an inherited empty one would hide it, and
tt-umd would send no reset at all; an absent one would show it every card on the host).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from ..text import strip_control

#: Seconds a reset command may take (tt-smi re-detects the devices after a reset).
RESET_TIMEOUT = 120.0
TOOLS = ("auto", "tt-umd", "tt-smi")
#: The tt-umd child: a False from ``warm_reset`` is a failed reset (exit status 1, the reason on stderr).
_UMD_RESET = (
    "import sys, tt_umd\n"
    "n = int(sys.argv[1])\n"
    "if not tt_umd.WarmReset.warm_reset(pci_device_ids=[n]):\n"
    "    sys.exit(f'tt_umd.WarmReset.warm_reset(pci_device_ids=[{n}]) returned False: the reset failed')\n"
)


class ResetUnavailable(Exception):
    """No reset tool is installed; the message says which to install."""


def reset_command(device_id: int, tool: str = "auto", python: str | None = None) -> list[str]:
    """The command that resets the one card ``device_id`` with ``tool`` ("auto": tt-umd, else tt-smi).

    ``python`` runs tt-umd's reset (default: this interpreter, if it can import ``tt_umd``).
    """
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
        raise ValueError(f"a reset names one device number (N of /dev/tenstorrent/N), not {device_id!r}: "
                         "an empty target resets every board")
    if tool not in TOOLS:
        raise ValueError(f"reset_tool must be one of {', '.join(TOOLS)}, not {tool!r}")
    if tool in ("auto", "tt-umd") and (python or importlib.util.find_spec("tt_umd") is not None):
        return [python or sys.executable, "-c", _UMD_RESET, str(device_id)]
    if tool == "tt-umd":
        raise ResetUnavailable(f"reset_tool is tt-umd, but {sys.executable} cannot import tt_umd: pip install tt-umd")
    smi = shutil.which("tt-smi")
    if smi is None:
        raise ResetUnavailable("no reset tool: install tt-smi (pipx install tt-smi) or tt-umd (pip install tt-umd) "
                               "where the scheduler runs")
    return [smi, "-r", f"/dev/tenstorrent/{device_id}", "--no_reinit"]


def child_environment() -> dict[str, str]:
    """This process's environment without ``TT_VISIBLE_DEVICES``, for a child that must see every card
    (a reset, or a probe of the host): tt-umd reads an empty one as "no device"."""
    return {k: v for k, v in os.environ.items() if k != "TT_VISIBLE_DEVICES"}


def available(tool: str = "auto") -> str | None:
    """None when ``tool`` can reset a card here, else why not (what to install)."""
    try:
        reset_command(0, tool)
    except ResetUnavailable as e:
        return str(e)
    return None


def reset(device_id: int, tool: str = "auto", timeout: float = RESET_TIMEOUT, python: str | None = None,
          bdf: str | None = None) -> str | None:
    """Reset one card: None when the command succeeded, else why not (for the device's problem). ``bdf``: the
    card's PCI address, the only card the tool then sees (without it, it sees every card)."""
    try:
        command = reset_command(device_id, tool, python)
    except ResetUnavailable as e:
        return str(e)
    try:
        env = child_environment() | ({"TT_VISIBLE_DEVICES": bdf} if bdf else {})
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except subprocess.TimeoutExpired:
        return f"{command[0]} did not finish the reset within {timeout:g} s"
    except OSError as e:
        return f"cannot run {command[0]}: {e}"
    if done.returncode != 0:
        tool_name = "tt-umd" if command[1] == "-c" else "tt-smi"
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        return f"{tool_name} exited with {done.returncode}: {strip_control(tail[0])[:200]}"
    return None
