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
import re
import stat
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
#: How tt-umd finds the mount (tt-umd device/hugepage.cpp at 3ed9cb6, the same in 0.9.14's library): a
#: /proc/mounts line of source "nodev" or "hugetlbfs" (not "none") at exactly /dev/hugepages-1G, whose
#: pagesize option is 1 GiB; any other line is skipped ("no huge page mount found").
UMD_MOUNT = re.compile(rf"^(nodev|hugetlbfs) ({re.escape(HUGEPAGES_MOUNT)}) hugetlbfs ([^ ]+) 0 0$")
UMD_PAGESIZE = re.compile(r"(?:^|,)pagesize=([0-9]+)([KMGT])(?:,|$)")
#: tt-system-tools v1.4.1 hugepages-setup/dev-hugepages\x2d1G.mount: What=hugetlbfs,
#: Options=pagesize=1G,mode=0777,nosuid,nodev (tt-umd creates its files there under umask(0), mode 0666).
MOUNT_FIX = (f"mkdir -p {HUGEPAGES_MOUNT} && mount -t hugetlbfs -o pagesize=1G,mode=0777,nosuid,nodev hugetlbfs "
             f"{HUGEPAGES_MOUNT} (tt-system-tools' dev-hugepages\\x2d1G.mount unit does it at boot)")
#: tt-umd device/api/umd/device/utils/kmd_versions.hpp (3ed9cb6; 0.9.14 holds 2.0.0 too): KMD_MINIMUM_VERSION,
#: "Running UMD requires KMD version 2.0.0 or newer". tt-kmd db5db95 (ttkmd-2.5.0) added
#: /proc/driver/tenstorrent/N/pids; f53b9cd (ttkmd-2.7.0) shows each pid in the reader's PID namespace.
KMD_MINIMUM, KMD_PIDS, KMD_NAMESPACED_PIDS = (2, 0, 0), (2, 5, 0), (2, 7, 0)
#: tt-umd device/firmware/firmware_utils.cpp (3ed9cb6; the same in 0.9.14): the oldest firmware bundle it
#: runs on Wormhole, else UnsupportedCMFWError; cards that differ raise CMFWMismatchError.
FW_MINIMUM_WORMHOLE = (18, 3, 0)
#: Sockets of container engines: whoever can reach one can start a container with any card.
CONTAINER_SOCKETS = ("var/run/docker.sock", "run/docker.sock", "run/podman/podman.sock", "run/containerd/containerd.sock")
#: tt-system-tools' hugepages-setup.sh: "for every Wormhole we allocate a full 4x1G pages".
HUGEPAGES_PER_CARD = 4
GIB = 1 << 30
#: What a check may take at most (importing ttnn takes seconds; a hung import must not hang doctor).
PROBE_TIMEOUT = 120.0


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    #: works, but worth reading (a risk on a shared host, a limit that may matter): never fails the run
    WARN = "warn"
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


def _version(text: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch) of "2.10.1-pre" or "18.3.0.0"; None if there is none."""
    found = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in found.groups()) if found else None


def _shown(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


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
            skipped = ["driver", "device nodes", "firmware", "iommu", "hugepages", "hugepages mount", "memlock", "ttnn",
                       "sfpi", "reset tool", "scheduler service", "container engines", "heartbeats"]
            return [Check("card host", Status.SKIP, NO_CARD_HERE),
                    *(Check(name, Status.SKIP, "a card host's check: no card here") for name in skipped)]
        ttnn = self._probe(self.python)
        iommu = self.iommu(cards)
        translated = bool(cards) and all(t.startswith("DMA") for t in self._iommu_types(cards).values() if t) and all(
            self._iommu_types(cards).values())  # tt-umd then maps system memory through it: no hugepages needed
        return [
            self.driver(),
            self.device_nodes(cards),
            self.firmware(cards),
            iommu,
            self.hugepages(len(cards), translated),
            self.hugepages_mount(translated),
            self.memlock(len(cards)),
            self.ttnn(ttnn),
            self.sfpi(ttnn),
            self.reset_tool(ttnn),
            self.service(),
            self.container_engines(),
            self.heartbeats(cards),
        ]

    def driver(self) -> Check:
        module = self.root / "sys/module/tenstorrent"
        if not module.is_dir():
            return Check("driver", Status.FAIL, f"tt-kmd is not loaded ({module} is missing)",
                         "install tt-kmd (https://github.com/tenstorrent/tt-kmd, or tt-installer), then: modprobe tenstorrent")
        text = _read(module / "version")
        version = _version(text)
        update = "install a current tt-kmd (tt-installer, or https://github.com/tenstorrent/tt-kmd), then reboot"
        if version is None:
            return Check("driver", Status.FAIL, f"tt-kmd is loaded but shows no version ({module}/version: {text!r}): "
                         f"tt-umd then refuses it", update)
        if version < KMD_MINIMUM:
            return Check("driver", Status.FAIL, f"tt-kmd {text} is older than {_shown(KMD_MINIMUM)}, the oldest "
                         f"tt-umd (and so ttnn) runs with", update)
        if version < KMD_PIDS:
            return Check("driver", Status.WARN, f"tt-kmd {text}: below {_shown(KMD_PIDS)} it lists no holder PIDs "
                         "(/proc/driver/tenstorrent/N/pids), so holders are found through /proc/*/fd only", update)
        if version < KMD_NAMESPACED_PIDS:
            return Check("driver", Status.WARN, f"tt-kmd {text}: below {_shown(KMD_NAMESPACED_PIDS)} a holder in a "
                         "container is listed by its PID inside the container, which names another process here", update)
        return Check("driver", Status.PASS, f"tt-kmd {text} is loaded")

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

    def firmware(self, cards) -> Check:
        """Each card's firmware bundle (tt-kmd's ``tt_fw_bundle_ver``, the telemetry value tt-umd reads): at least
        tt-umd's minimum, and the same on every card."""
        if not cards:
            return Check("firmware", Status.SKIP, "no card")
        bundles = {c.id: (c.firmware or {}).get("fw_bundle") for c in cards}
        update = "flash the current firmware bundle on every card: tt-flash (tt-installer does it), then power-cycle"
        if any(v is None for v in bundles.values()):
            missing = ", ".join(f"/dev/tenstorrent/{i}" for i, v in bundles.items() if v is None)
            return Check("firmware", Status.SKIP, f"this driver shows no firmware bundle for {missing} (tt_fw_bundle_ver)")
        old = [f"/dev/tenstorrent/{i} {v}" for i, v in bundles.items() if (_version(v) or (0,)) < FW_MINIMUM_WORMHOLE]
        if old:
            return Check("firmware", Status.FAIL, f"firmware bundle older than {_shown(FW_MINIMUM_WORMHOLE)}, the oldest "
                         f"tt-umd runs on Wormhole: {', '.join(old)}", update)
        if len({_version(v) for v in bundles.values()}) > 1:
            each = ", ".join(f"/dev/tenstorrent/{i} {v}" for i, v in bundles.items())
            return Check("firmware", Status.FAIL, f"the cards run different firmware bundles ({each}): tt-umd refuses "
                         "to open them together", update)
        return Check("firmware", Status.PASS, f"firmware bundle {next(iter(bundles.values()))} on every card")

    def iommu(self, cards) -> Check:
        """tt-umd's test (pci_device.cpp detect_iommu): the card's iommu_group/type begins with "DMA" (DMA,
        DMA-FQ). Then it maps system memory through the IOMMU and needs no hugepages; otherwise ("identity",
        e.g. iommu=pt, which tt-system-tools' Debian package sets, or no IOMMU) it needs them."""
        if not cards:
            return Check("iommu", Status.SKIP, "no card")
        types = self._iommu_types(cards)
        on = {i for i, t in types.items() if t and t.startswith("DMA")}
        if on and len(on) < len(types):
            each = ", ".join(f"/dev/tenstorrent/{i} {t or 'none'}" for i, t in types.items())
            return Check("iommu", Status.FAIL, f"the IOMMU translates for some cards only ({each}): tt-umd wants one "
                         "state for all", "give every card the same IOMMU domain type (iommu=pt for all, or none)")
        if on:
            return Check("iommu", Status.PASS, f"the IOMMU translates for every card ({types[min(on)]}): tt-umd maps "
                         "system memory through it, and hugepages are not needed")
        shown = sorted({t or "no IOMMU group" for t in types.values()})
        return Check("iommu", Status.PASS, f"no IOMMU translation ({', '.join(shown)}): tt-umd uses 1 GiB hugepages "
                     "(the next two checks)")

    def _iommu_types(self, cards) -> dict[int, str | None]:
        return {c.id: _read(self.root / "sys/bus/pci/devices" / c.bdf / "iommu_group/type") for c in cards}

    def hugepages(self, cards: int, translated: bool = False) -> Check:
        if translated:
            return Check("hugepages", Status.SKIP, "not needed: the IOMMU translates")
        limit = self._cgroup_hugetlb_limit()
        if limit is not None and limit < HUGEPAGES_PER_CARD * max(cards, 1) * GIB:
            return Check("hugepages", Status.FAIL,
                         f"this container may use {limit // GIB} GiB of 1 GiB hugepages (its cgroup's hugetlb.1GB.max), "
                         f"{HUGEPAGES_PER_CARD * max(cards, 1)} needed",
                         f"request them in the pod: resources.limits hugepages-1Gi: {HUGEPAGES_PER_CARD * max(cards, 1)}Gi "
                         "(kubelet sets the limit of every page size a pod does not request to 0)")
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

    def _cgroup_hugetlb_limit(self) -> int | None:
        """Bytes of 1 GiB hugepages this process's cgroup (v2) may use, or None where nothing limits them."""
        text = _read(self.root / "sys/fs/cgroup/hugetlb.1GB.max")
        return int(text) if text and text.isdigit() else None

    def hugepages_mount(self, translated: bool = False) -> Check:
        if translated:
            return Check("hugepages mount", Status.SKIP, "not needed: the IOMMU translates")
        mounts = _read(self.root / "proc/mounts") or ""
        at_point = [line for line in mounts.splitlines() if len(line.split()) > 1 and line.split()[1] == HUGEPAGES_MOUNT]
        for line in at_point:
            found = UMD_MOUNT.match(line)
            size = UMD_PAGESIZE.search(found.group(3)) if found else None
            if found and size and int(size.group(1)) << {"K": 10, "M": 20, "G": 30, "T": 40}[size.group(2)] == GIB:
                return self._mount_writable(found.group(3))
        if at_point:
            return Check("hugepages mount", Status.FAIL, f"tt-umd skips the mount at {HUGEPAGES_MOUNT} ({at_point[0]!r}): "
                         "it reads only a hugetlbfs mount whose source is 'hugetlbfs' or 'nodev' (not 'none'), with "
                         f"pagesize=1G", f"umount {HUGEPAGES_MOUNT}, then {MOUNT_FIX}")
        return Check("hugepages mount", Status.FAIL, f"no hugetlbfs mounted at {HUGEPAGES_MOUNT}", MOUNT_FIX)

    def _mount_writable(self, options: str) -> Check:
        """tt-umd creates its files in the mount as the kernel's user: the mount must be writable by all of them."""
        try:
            mode = (self.root / HUGEPAGES_MOUNT.lstrip("/")).stat().st_mode & 0o7777
        except OSError:
            mode = None
        option = re.search(r"(?:^|,)mode=([0-7]+)", options)
        mode = int(option.group(1), 8) if option else mode
        if mode is None or mode & 0o003 != 0o003:
            shown = "unknown" if mode is None else f"{mode:04o}"
            return Check("hugepages mount", Status.FAIL, f"{HUGEPAGES_MOUNT} is mounted as tt-umd reads it, but its mode "
                         f"is {shown}: other users' kernels cannot create their files there",
                         f"mount -o remount,mode=0777 {HUGEPAGES_MOUNT} (and mode=0777 in its mount unit)")
        return Check("hugepages mount", Status.PASS, f"hugetlbfs ({options}) at {HUGEPAGES_MOUNT}, writable by every user")

    def memlock(self, cards: int) -> Check:
        limits = _read(self.root / "proc/self/limits") or ""
        line = next((ln for ln in limits.splitlines() if ln.startswith("Max locked memory")), None)
        need = max(cards, 1) * GIB
        fix = ("raise it where kernels start: 'ulimit -l unlimited', LimitMEMLOCK=infinity in the Jupyter (or "
               "JupyterHub) systemd unit, '* - memlock unlimited' in /etc/security/limits.d/, or --ulimit memlock=-1 "
               "for a container")
        if line is None:
            return Check("memlock", Status.WARN, "cannot read the memlock limit (proc/self/limits)", fix)
        soft = line.split()[3]
        if soft == "unlimited" or (soft.isdigit() and int(soft) >= need):
            shown = soft if soft == "unlimited" else f"{int(soft) / GIB:g} GiB"
            return Check("memlock", Status.PASS, f"memlock limit {shown} (at least 1 GiB per card)")
        shown = f"{int(soft) / (1 << 20):g} MiB" if soft.isdigit() else soft
        # tt-kmd pins pages without memlock accounting (memory.c: pin_user_pages_fast_longterm, no
        # account_locked_vm, at ttkmd-2.10.0): a low limit is not what stops a kernel, so this only informs.
        return Check("memlock", Status.WARN, f"memlock limit {shown}, below 1 GiB per card ({need // GIB} GiB); tt-kmd "
                     "pins its pages without counting them against it, but other DMA users may", fix)

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

    def container_engines(self) -> Check:
        """Who can reach a container engine's socket can start a container with any card (``--device
        /dev/tenstorrent/N``), whatever the node's owner and mode: on a shared host they are root."""
        groups = _group_members(self.root)
        reach, seen = [], set()
        for relative in CONTAINER_SOCKETS:
            path = self.root / relative
            try:
                st = path.stat()
            except OSError:
                continue
            if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) in seen:  # /var/run is /run on most hosts
                continue
            seen.add((st.st_dev, st.st_ino))
            who = set()
            if st.st_mode & 0o006:
                who.add("every user")
            if st.st_mode & 0o060:
                who |= groups.get(st.st_gid, set())
            who.discard("root")
            if who:
                reach.append(f"/{relative} ({', '.join(sorted(who))})")
        if reach:
            return Check("container engines", Status.WARN,
                         f"these users can reach a container engine: {'; '.join(reach)}: they can give a container any "
                         "card, leased or not, whatever the device nodes allow",
                         "on a shared host leave only administrators in the docker group (gpasswd -d USER docker), or "
                         "use rootless Docker or Podman, which cannot open other users' device nodes")
        return Check("container engines", Status.PASS, "no ordinary user can reach a container engine's socket")

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


def _group_members(root: Path) -> dict[int, set[str]]:
    """gid -> the users in that group (listed in etc/group, or having it as their primary group in etc/passwd)."""
    members: dict[int, set[str]] = {}
    for line in (_read(root / "etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit():
            members.setdefault(int(parts[2]), set()).update(u for u in parts[3].split(",") if u)
    for line in (_read(root / "etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[3].isdigit():
            members.setdefault(int(parts[3]), set()).add(parts[0])
    return members


def render(checks: list[Check]) -> str:
    """The checks for a terminal: one line each, the fix indented under a failure."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.value.upper():<4}  {c.name:<{width}}  {strip_control(c.detail)}")
        if c.fix and c.status in (Status.FAIL, Status.WARN):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {strip_control(c.fix)}")
    failed = sum(c.status is Status.FAIL for c in checks)
    if checks and checks[0].name == "card host" and checks[0].status is Status.SKIP:
        lines.append("\nnothing to check on this machine: it has no card (see the first line)")
        return "\n".join(lines)
    warned = sum(c.status is Status.WARN for c in checks)
    note = f" ({warned} warning{'s' * (warned != 1)} to read)" if warned else ""
    lines.append(f"\n{failed} of {len(checks)} checks failed{note}" if failed
                 else f"\nall {len(checks)} checks passed or were skipped{note}")
    return "\n".join(lines)

