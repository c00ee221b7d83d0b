"""``jupyter tt doctor``: is this a card host where kernels can open their devices? One line per check.

The order is the order a host is set up in: the driver, its device nodes, 1 GiB hugepages and
their mount, the memlock limit, ttnn in the kernels' Python, the SFPI compiler ttnn builds kernels
with, a tool that can reset a card, the scheduler service, and the cards' firmware heartbeats. Each
check passes, fails with the fix, or is skipped when an earlier one it needs failed. Files are read
under ``root`` (``/`` on a host; the sysfs fixture in tests, ``JUPYTER_TT_SYSFS_ROOT``), and the
checks never open a device node or send anything to a card.

A machine with no Tenstorrent card at all (no tt-kmd, no card under its class folder and no PCI
function of Tenstorrent's vendor id) is not a card host: the doctor says so first, says what runs
there instead (the simulated inventory, serving on the CPU), and skips the card host's checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

from .config import TTSettings
from .devices import SysfsInventory
from .devices.sfpi import find_sfpi
from .scheduler.reset import available as why_no_reset
from .scheduler.reset import child_environment, reset_command
from .text import strip_control

#: Tenstorrent's PCI vendor id: tt-kmd enumerate.h, PCI_VENDOR_ID_TENSTORRENT 0x1E52 (read 2026-12-07).
TT_PCI_VENDOR = "0x1e52"
#: CPython versions PyPI has ttnn wheels for (ttnn 0.81.1: cp310 and cp312).
TTNN_PYTHONS = ("3.10", "3.12")
NO_CARD_HERE = ("no Tenstorrent card on this machine (no tt-kmd, no card, no PCI device of vendor 1e52): jupyter-tt "
                "runs here on the simulated inventory (JUPYTER_TT_INVENTORY=simulated:n300x4, or `make demo`) and "
                "serves models on the CPU (the torch and openvino backends); the checks below are for a card host")
HUGEPAGES_1G = "sys/kernel/mm/hugepages/hugepages-1048576kB"
HUGEPAGES_MOUNT = "/dev/hugepages-1G"
#: tt-system-tools' hugepages-setup.sh: "for every Wormhole we allocate a full 4x1G pages".
HUGEPAGES_PER_CARD = 4
GIB = 1 << 30
#: What a check may take at most (importing ttnn takes seconds; a hung import must not hang doctor).
PROBE_TIMEOUT = 120.0


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class TtnnProbe:
    """What the kernels' Python says about its ttnn (found by importing it there, in a child)."""

    python: str
    error: str | None = None
    version: str | None = None
    package_dir: str | None = None
    runtime_root: str | None = None  # TT_METAL_RUNTIME_ROOT, where set
    umd_version: str | None = None  # the UMD library inside the wheel (build/lib/libtt-umd.so.X.Y.Z)
    python_version: str | None = None  # "3.11": whether ttnn has a wheel for it


_PROBE = """
import importlib.metadata, json, os, pathlib, sys
out = {"runtime_root": os.environ.get("TT_METAL_RUNTIME_ROOT"), "python_version": "%d.%d" % sys.version_info[:2]}
try:
    import ttnn
    here = pathlib.Path(ttnn.__file__).resolve().parent
    libs = sorted(p.name.split(".so.")[1] for p in here.glob("build/lib/libtt-umd.so.*.*.*"))
    out.update(version=importlib.metadata.version("ttnn"), package_dir=str(here), umd_version=(libs or [None])[-1])
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def probe_ttnn(python: str, timeout: float = PROBE_TIMEOUT) -> TtnnProbe:
    """Import ttnn in ``python`` (the kernels' interpreter), with every card visible and a deadline."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=child_environment())
    except subprocess.TimeoutExpired:
        return TtnnProbe(python=python, error=f"importing ttnn did not finish within {timeout:g} s")
    except OSError as e:
        return TtnnProbe(python=python, error=f"cannot run {python}: {e}")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return TtnnProbe(python=python, error=f"{python} exited with {done.returncode}: {tail[:300]}")
    return TtnnProbe(python=python, **{k: v for k, v in found.items() if k in TtnnProbe.__dataclass_fields__})


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


class Doctor:
    """The checks, over one host view. ``settings``: the inventory root, reset tool and scheduler to check."""

    def __init__(self, settings: TTSettings, *, python: str = sys.executable, heartbeat_wait: float = 2.0,
                 probe: Callable[[str], TtnnProbe] = probe_ttnn, clock: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.root = Path(settings.sysfs_root)
        self.python = python
        self.heartbeat_wait = heartbeat_wait
        self._probe = probe
        self._sleep = clock
        self.inventory = SysfsInventory(str(self.root), visible=settings.visible_devices)

    def card_host(self, cards) -> bool:
        """Whether this machine has a Tenstorrent card at all: tt-kmd, a card it lists, or a PCI function of
        Tenstorrent's vendor id (a card whose driver is missing is still a card host, with a failing check)."""
        if cards or (self.root / "sys/module/tenstorrent").is_dir():
            return True
        return any(_read(vendor) == TT_PCI_VENDOR for vendor in (self.root / "sys/bus/pci/devices").glob("*/vendor"))

    def run(self) -> list[Check]:
        cards = self.inventory.devices()
        if not self.card_host(cards):
            skipped = ["driver", "device nodes", "hugepages", "hugepages mount", "memlock", "ttnn", "sfpi", "reset tool",
                       "scheduler service", "heartbeats"]
            return [Check("card host", Status.SKIP, NO_CARD_HERE),
                    *(Check(name, Status.SKIP, "a card host's check: no card here") for name in skipped)]
        ttnn = self._probe(self.python)
        return [
            self.driver(),
            self.device_nodes(cards),
            self.hugepages(len(cards)),
            self.hugepages_mount(),
            self.memlock(len(cards)),
            self.ttnn(ttnn),
            self.sfpi(ttnn),
            self.reset_tool(ttnn),
            self.service(),
            self.heartbeats(cards),
        ]

    def driver(self) -> Check:
        module = self.root / "sys/module/tenstorrent"
        if not module.is_dir():
            return Check("driver", Status.FAIL, f"tt-kmd is not loaded ({module} is missing)",
                         "install tt-kmd (https://github.com/tenstorrent/tt-kmd, or tt-installer), then: modprobe tenstorrent")
        return Check("driver", Status.PASS, f"tt-kmd {_read(module / 'version') or '(version unknown)'} is loaded")

    def device_nodes(self, cards) -> Check:
        if not cards:
            why = "; ".join(self.inventory.visible_problems) or f"no card under {self.inventory.class_dir}"
            return Check("device nodes", Status.FAIL, why,
                         "check that the cards are seated and tt-kmd is loaded (lspci -d 1e52:), and TTSettings.visible_devices")
        lines, missing = [], []
        for card in cards:
            node = self.inventory.node(card.id)
            try:
                st = node.stat()
            except OSError:
                missing.append(card.id)
                lines.append(f"{card.path} missing ({card.card_type} {card.bdf})")
                continue
            lines.append(f"{card.path} {card.card_type} {card.bdf} owner uid {st.st_uid} gid {st.st_gid} "
                         f"mode {st.st_mode & 0o7777:04o}")
        problems = list(self.inventory.visible_problems)
        if missing or problems:
            return Check("device nodes", Status.FAIL, "; ".join(problems + lines),
                         "reload tt-kmd (modprobe -r tenstorrent && modprobe tenstorrent); in a container, pass the "
                         "device nodes in (--device /dev/tenstorrent/N)")
        return Check("device nodes", Status.PASS, f"{len(cards)} card(s): " + "; ".join(lines))

    def hugepages(self, cards: int) -> Check:
        reserved = _read(self.root / HUGEPAGES_1G / "nr_hugepages")
        free = _read(self.root / HUGEPAGES_1G / "free_hugepages")
        need = HUGEPAGES_PER_CARD * max(cards, 1)
        fix = (f"reserve {need} hugepages of 1 GiB ({HUGEPAGES_PER_CARD} per Wormhole card) at boot: tt-system-tools' "
               f"hugepages-setup.sh (tenstorrent-hugepages.service, installed by tt-installer) does it, or the kernel "
               f"command line 'hugepagesz=1G hugepages={need}'")
        if reserved is None:
            return Check("hugepages", Status.FAIL, "the kernel has no 1 GiB hugepage pool", fix)
        if not reserved.isdigit() or int(reserved) < need:
            return Check("hugepages", Status.FAIL, f"{reserved} hugepages of 1 GiB reserved, {need} needed", fix)
        return Check("hugepages", Status.PASS, f"{reserved} hugepages of 1 GiB reserved ({free or '?'} free), {need} needed")

    def hugepages_mount(self) -> Check:
        mounts = _read(self.root / "proc/mounts") or ""
        for line in mounts.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[1] == HUGEPAGES_MOUNT and fields[2] == "hugetlbfs":
                if "pagesize=1G" in fields[3] or "pagesize=1024M" in fields[3]:
                    return Check("hugepages mount", Status.PASS, f"hugetlbfs ({fields[3]}) at {HUGEPAGES_MOUNT}")
                return Check("hugepages mount", Status.FAIL, f"{HUGEPAGES_MOUNT} is hugetlbfs with {fields[3]}, not 1 GiB pages",
                             f"mount -t hugetlbfs -o pagesize=1G none {HUGEPAGES_MOUNT}")
        return Check("hugepages mount", Status.FAIL, f"no hugetlbfs mounted at {HUGEPAGES_MOUNT}",
                     f"mkdir -p {HUGEPAGES_MOUNT} && mount -t hugetlbfs -o pagesize=1G none {HUGEPAGES_MOUNT} "
                     "(tt-system-tools' dev-hugepages-1G.mount unit does it at boot)")

    def memlock(self, cards: int) -> Check:
        limits = _read(self.root / "proc/self/limits") or ""
        line = next((ln for ln in limits.splitlines() if ln.startswith("Max locked memory")), None)
        need = max(cards, 1) * GIB
        fix = ("raise it where kernels start: 'ulimit -l unlimited', LimitMEMLOCK=infinity in the Jupyter (or "
               "JupyterHub) systemd unit, '* - memlock unlimited' in /etc/security/limits.d/, or --ulimit memlock=-1 "
               "for a container")
        if line is None:
            return Check("memlock", Status.FAIL, "cannot read the memlock limit (proc/self/limits)", fix)
        soft = line.split()[3]
        if soft == "unlimited" or (soft.isdigit() and int(soft) >= need):
            shown = soft if soft == "unlimited" else f"{int(soft) / GIB:g} GiB"
            return Check("memlock", Status.PASS, f"memlock limit {shown} (at least 1 GiB per card)")
        shown = f"{int(soft) / (1 << 20):g} MiB" if soft.isdigit() else soft
        return Check("memlock", Status.FAIL, f"memlock limit {shown}, below 1 GiB per card ({need // GIB} GiB)", fix)

    def ttnn(self, probe: TtnnProbe) -> Check:
        if probe.error:
            if probe.python_version and probe.python_version not in TTNN_PYTHONS:  # no wheel to install there
                fix = (f"ttnn has wheels for CPython {' and '.join(TTNN_PYTHONS)} only, and {probe.python} is "
                       f"{probe.python_version}: make the kernels' environment with one of those (python3.12 -m venv "
                       f"ENV && ENV/bin/pip install ttnn), then point --python at ENV/bin/python")
            else:
                fix = (f"{probe.python} -m pip install ttnn (wheels for CPython {' and '.join(TTNN_PYTHONS)}); or point "
                       "--python at the kernels' interpreter")
            return Check("ttnn", Status.FAIL, f"{probe.python} cannot import ttnn: {strip_control(probe.error)[:300]}", fix)
        umd = f", its UMD {probe.umd_version}" if probe.umd_version else ""
        return Check("ttnn", Status.PASS, f"ttnn {probe.version} in {probe.python} ({probe.package_dir}{umd})")

    def sfpi(self, probe: TtnnProbe) -> Check:
        if probe.error or not probe.package_dir:
            return Check("sfpi", Status.SKIP, "needs ttnn (above): SFPI is found where ttnn looks for it")
        sfpi = find_sfpi(probe.package_dir, probe.runtime_root, self.root)
        if sfpi.problem:
            return Check("sfpi", Status.FAIL, sfpi.problem, sfpi.fix)
        return Check("sfpi", Status.PASS, sfpi.summary)

    def reset_tool(self, probe: TtnnProbe) -> Check:
        missing = why_no_reset(self.settings.reset_tool)
        if missing:
            return Check("reset tool", Status.FAIL, missing,
                         "pip install tt-umd (the UMD version ttnn carries) where the scheduler service runs, or "
                         "pipx install tt-smi (its own venv: it pins another tt-umd)")
        command = reset_command(0, self.settings.reset_tool)
        if command[1] == "-c":
            from importlib.metadata import version

            umd = version("tt-umd")
            same = "" if not probe.umd_version else (
                f"; ttnn carries UMD {probe.umd_version}" + ("" if probe.umd_version == umd else " (another version)"))
            return Check("reset tool", Status.PASS, f"tt-umd {umd} in {sys.executable} (WarmReset){same}")
        return Check("reset tool", Status.PASS, f"tt-smi at {command[0]} (tt-smi -r /dev/tenstorrent/N)")

    def service(self) -> Check:
        from .scheduler.client import ServiceClient

        socket_path = self.settings.scheduler_socket()
        start = ("start it as root: jupyter tt scheduler (examples/shared-host has a systemd unit), so that device "
                 "nodes are fenced between users")
        if socket_path is None:
            return Check("scheduler service", Status.FAIL, "no scheduler service: leases are personal, not enforced", start)
        try:
            report = ServiceClient(socket_path, timeout=10).report()
        except Exception as e:  # any failure to talk to it is the finding
            return Check("scheduler service", Status.FAIL, f"{socket_path} does not answer: {strip_control(str(e))[:300]}", start)
        scheduler = report.scheduler
        if not scheduler.enforcing:
            return Check("scheduler service", Status.FAIL, f"{socket_path} answers, but {scheduler.enforcement}",
                         "run the service as root, so that it can own the device nodes")
        return Check("scheduler service", Status.PASS, f"{socket_path}: {scheduler.enforcement}")

    def heartbeats(self, cards) -> Check:
        if not cards:
            return Check("heartbeats", Status.SKIP, "no card to watch")
        beat = {c.id: _read(self.root / f"sys/class/tenstorrent/tenstorrent!{c.id}/tt_heartbeat") for c in cards}
        if all(v is None for v in beat.values()):
            return Check("heartbeats", Status.SKIP, "this driver or firmware shows no heartbeat (tt_heartbeat)")
        self._sleep(self.heartbeat_wait)
        after = {i: _read(self.root / f"sys/class/tenstorrent/tenstorrent!{i}/tt_heartbeat") for i in beat}
        frozen = sorted(i for i in beat if beat[i] is not None and after[i] == beat[i])
        if frozen:
            return Check("heartbeats", Status.FAIL,
                         f"firmware heartbeat of {', '.join(f'/dev/tenstorrent/{i}' for i in frozen)} did not advance "
                         f"in {self.heartbeat_wait:g} s",
                         "reset the card (tt-smi -r /dev/tenstorrent/N), then check its firmware (tt-smi -s); "
                         "a card that stays frozen needs a power cycle")
        return Check("heartbeats", Status.PASS, f"every card's firmware heartbeat advanced in {self.heartbeat_wait:g} s")


def render(checks: list[Check]) -> str:
    """The checks for a terminal: one line each, the fix indented under a failure."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.value.upper():<4}  {c.name:<{width}}  {strip_control(c.detail)}")
        if c.fix and c.status is Status.FAIL:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {strip_control(c.fix)}")
    failed = sum(c.status is Status.FAIL for c in checks)
    if checks and checks[0].name == "card host" and checks[0].status is Status.SKIP:
        lines.append("\nnothing to check on this machine: it has no card (see the first line)")
        return "\n".join(lines)
    lines.append(f"\n{failed} of {len(checks)} checks failed" if failed else f"\nall {len(checks)} checks passed or were skipped")
    return "\n".join(lines)

