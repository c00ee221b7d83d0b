"""Resetting a card after its holder died: which tool, and the command that resets one card only.

A process killed or crashed mid-run can leave a card hung (its NoC, its firmware's queues) for the
next holder. The scheduler takes such a card out of the pool (``resetting``); this module resets it
with tt-umd's ``WarmReset`` (through this Python, in a child process with a deadline) or ``tt-smi
-r``, whichever is installed. Both reset **every** board when given no device, so every command
here names its one device, and an empty list is refused before anything runs.

Both tools take the device's PCI index: N of ``/dev/tenstorrent/N`` (what ``tt-smi -ls`` lists).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

#: Seconds a reset command may take (tt-smi re-detects the devices after a reset).
RESET_TIMEOUT = 120.0
TOOLS = ("auto", "tt-umd", "tt-smi")


class ResetUnavailable(Exception):
    """No reset tool is installed; the message says which to install."""


def reset_command(device_id: int, tool: str = "auto") -> list[str]:
    """The command that resets the one card ``device_id`` with ``tool`` ("auto": tt-umd, else tt-smi)."""
    if not isinstance(device_id, int) or isinstance(device_id, bool) or device_id < 0:
        raise ValueError(f"a reset names one device number (N of /dev/tenstorrent/N), not {device_id!r}: "
                         "an empty target resets every board")
    if tool not in TOOLS:
        raise ValueError(f"reset_tool must be one of {', '.join(TOOLS)}, not {tool!r}")
    if tool in ("auto", "tt-umd") and importlib.util.find_spec("tt_umd") is not None:
        return [sys.executable, "-c", "import sys, tt_umd; tt_umd.WarmReset.warm_reset([int(sys.argv[1])])", str(device_id)]
    if tool == "tt-umd":
        raise ResetUnavailable(f"reset_tool is tt-umd, but {sys.executable} cannot import tt_umd: pip install tt-umd")
    smi = shutil.which("tt-smi")
    if smi is None:
        raise ResetUnavailable("no reset tool: install tt-smi (pip install tt-smi) or tt-umd where the scheduler runs")
    return [smi, "-r", str(device_id)]


def available(tool: str = "auto") -> str | None:
    """None when ``tool`` can reset a card here, else why not (what to install)."""
    try:
        reset_command(0, tool)
    except ResetUnavailable as e:
        return str(e)
    return None


def reset(device_id: int, tool: str = "auto", timeout: float = RESET_TIMEOUT) -> str | None:
    """Reset one card: None when the command succeeded, else why not (for the device's problem)."""
    try:
        command = reset_command(device_id, tool)
    except ResetUnavailable as e:
        return str(e)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{command[0]} did not finish the reset within {timeout:g} s"
    except OSError as e:
        return f"cannot run {command[0]}: {e}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{' '.join(command[-3:])} exited with {done.returncode}: {tail[0][:200]}"
    return None
