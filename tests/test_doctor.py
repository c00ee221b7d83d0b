"""``jupyter tt doctor`` on a card host's files (the sysfs fixture, a driver stand-in): every check passes on a
host set up as docs/admin/card-host.md says, and each fails, with its fix, when its part is missing.

ttnn itself is probed for real in the ttnn lane (``tests_ttnn/test_doctor_ttnn.py``); here the probe's
answer is given, and only the main lane's own Python (which has no ttnn) is probed for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from jupyter_tt.config import TTSettings
from jupyter_tt.devices.sfpi import find_sfpi
from jupyter_tt.doctor import Doctor, Status, TtnnProbe, probe_ttnn, render

UNLIMITED = "Max locked memory         unlimited            unlimited            bytes\n"


def set_up(tree, *, hugepages=8, mount="mode=777,pagesize=1024M", source="hugetlbfs", memlock=UNLIMITED, sfpi="7.89.0",
           driver="2.10.0"):
    """The parts of a card host beside the cards, under the fixture's root, as the card-host steps (docs/admin/card-host.md) leave them."""
    root = tree.root

    def write(path, text):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    if driver:
        write("sys/module/tenstorrent/version", f"{driver}\n")
    if hugepages is not None:
        write("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", f"{hugepages}\n")
        write("sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", f"{hugepages}\n")
    # As the kernel shows what tt-system-tools' mount unit makes (What=hugetlbfs, mode=0777, pagesize=1G).
    write("proc/mounts", "proc /proc proc rw 0 0\n" + (f"{source} /dev/hugepages-1G hugetlbfs rw,nosuid,nodev,relatime,"
                                                       f"{mount} 0 0\n" if mount else ""))
    write("proc/self/limits", "Limit                     Soft Limit           Hard Limit           Units\n" + memlock)
    if sfpi:
        write("opt/tenstorrent/sfpi/compiler/bin/riscv-tt-elf-g++", "#!/bin/sh\n")
        write("opt/tenstorrent/sfpi/sfpi.version", f"{sfpi}\n")
    return tree


@pytest.fixture
def ttnn_dir(tmp_path):
    """Where a ttnn wheel is installed: only the file the SFPI check reads from it."""
    path = tmp_path / "site-packages/ttnn"
    (path / "tt_metal").mkdir(parents=True)
    (path / "tt_metal/sfpi-version").write_text("# sfpi release 7.89.0\n\nsfpi_version='7.89.0'\nsfpi_build='1050'\n")
    return path


@pytest.fixture
def installed(ttnn_dir):
    return lambda python: TtnnProbe(python=python, version="0.81.1", package_dir=str(ttnn_dir), umd_version="0.9.14")


def doctor(tree, probe, scheduler="personal", **kw) -> dict[str, object]:
    settings = TTSettings(inventory="sysfs", sysfs_root=str(tree.root), scheduler=scheduler, reset_tool="tt-smi")
    checks = Doctor(settings, probe=probe, heartbeat_wait=kw.pop("heartbeat_wait", 0.6), **kw).run()
    return {c.name: c for c in checks}


def test_every_check_passes_on_a_host_set_up_as_the_readme_says(card_host, installed, service):
    set_up(card_host)
    with card_host.beating(0.1):
        svc = service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)})
        checks = doctor(card_host, installed, scheduler=svc.address)
    assert {name: c.status for name, c in checks.items()} == {name: Status.PASS for name in checks}, render(list(checks.values()))
    assert list(checks) == ["driver", "device nodes", "firmware", "iommu", "hugepages", "hugepages mount", "memlock",
                            "ttnn", "sfpi", "reset tool", "scheduler service", "container engines", "heartbeats"]
    assert "tt-kmd 2.10.0" in checks["driver"].detail and "SFPI 7.89.0" in checks["sfpi"].detail
    assert "tt-umd uses 1 GiB hugepages" in checks["iommu"].detail and "writable by every user" in checks["hugepages mount"].detail
    assert "/dev/tenstorrent/0 n300 0000:04:00.0 owner uid 0 gid 0 mode 0600" in checks["device nodes"].detail  # fenced
    assert "device nodes are owned by their lease's user" in checks["scheduler service"].detail
    assert "tt-smi -r /dev/tenstorrent/N" in checks["reset tool"].detail


@pytest.mark.parametrize(("part", "change", "says", "fix"), [
    ("driver", {"driver": None}, "tt-kmd is not loaded", "modprobe tenstorrent"),
    ("hugepages", {"hugepages": 7}, "7 hugepages of 1 GiB reserved, 8 needed", "hugepagesz=1G hugepages=8"),
    ("hugepages", {"hugepages": None}, "no 1 GiB hugepage pool", "hugepagesz=1G"),
    ("hugepages mount", {"mount": None}, "no hugetlbfs mounted at /dev/hugepages-1G",
     "mount -t hugetlbfs -o pagesize=1G,mode=0777,nosuid,nodev hugetlbfs /dev/hugepages-1G"),
    ("hugepages mount", {"mount": "mode=777,pagesize=2M"}, "tt-umd skips the mount at /dev/hugepages-1G", "pagesize=1G"),
    # Our own earlier fix made this one: tt-umd reads only the sources "hugetlbfs" and "nodev".
    ("hugepages mount", {"source": "none"}, "whose source is 'hugetlbfs' or 'nodev' (not 'none')",
     "hugetlbfs /dev/hugepages-1G"),
    ("hugepages mount", {"mount": "mode=755,pagesize=1024M"}, "its mode is 0755: other users' kernels cannot",
     "remount,mode=0777"),
    ("driver", {"driver": "1.34.0"}, "tt-kmd 1.34.0 is older than 2.0.0", "install a current tt-kmd"),
    ("sfpi", {"sfpi": None}, "sfpi not found at", "install SFPI 7.89.0 from https://github.com/tenstorrent/sfpi/releases"),
    ("sfpi", {"sfpi": "7.78.0"}, "SFPI 7.78.0 at", "install SFPI 7.89.0"),
])
def test_a_missing_part_fails_its_check_with_the_fix(card_host, installed, part, change, says, fix):
    checks = doctor(set_up(card_host, **change), installed)
    check = checks[part]
    assert check.status is Status.FAIL and says in check.detail and fix in check.fix, check


def test_a_low_memlock_limit_is_told_but_fails_nothing_since_tt_kmd_does_not_count_its_pins(card_host, installed):
    low = "Max locked memory         8388608              8388608              bytes\n"
    check = doctor(set_up(card_host, memlock=low), installed)["memlock"]
    assert check.status is Status.WARN and "memlock limit 8 MiB, below 1 GiB per card (2 GiB)" in check.detail
    assert "without counting them" in check.detail and "LimitMEMLOCK=infinity" in check.fix


@pytest.mark.parametrize(("driver", "says"), [("2.4.1", "lists no holder PIDs"), ("2.6.0", "by its PID inside the container")])
def test_a_driver_that_works_but_lists_holders_poorly_is_a_warning(card_host, installed, driver, says):
    check = doctor(set_up(card_host, driver=driver), installed)["driver"]
    assert check.status is Status.WARN and says in check.detail


def iommu_type(tree, value_by_card):
    for i, value in enumerate(value_by_card):
        group = tree.root / "sys/bus/pci/devices" / tree.bdf(i) / "iommu_group"
        group.mkdir(parents=True, exist_ok=True)
        (group / "type").write_text(f"{value}\n")


def test_with_the_iommu_translating_for_every_card_no_hugepages_are_needed(card_host, installed):
    set_up(card_host, hugepages=None, mount=None)
    iommu_type(card_host, ["DMA-FQ", "DMA-FQ"])
    checks = doctor(card_host, installed)
    assert checks["iommu"].status is Status.PASS and "hugepages are not needed" in checks["iommu"].detail
    assert checks["hugepages"].status is checks["hugepages mount"].status is Status.SKIP
    iommu_type(card_host, ["identity", "identity"])  # iommu=pt: tt-umd takes the hugepages path
    checks = doctor(card_host, installed)
    assert checks["iommu"].status is Status.PASS and "(identity)" in checks["iommu"].detail
    assert checks["hugepages"].status is Status.FAIL
    iommu_type(card_host, ["DMA", "identity"])
    assert doctor(card_host, installed)["iommu"].status is Status.FAIL


def test_firmware_older_than_tt_umds_minimum_or_different_between_cards_fails(card_host, installed):
    set_up(card_host)
    for i, version in enumerate(["18.2.0.0", "18.2.0.0"]):  # as tt-kmd prints it: major.minor.patch.build
        (card_host.root / f"sys/class/tenstorrent/tenstorrent!{i}/tt_fw_bundle_ver").write_text(version + "\n")
    check = doctor(card_host, installed)["firmware"]
    assert check.status is Status.FAIL and "older than 18.3.0" in check.detail and "tt-flash" in check.fix
    (card_host.root / "sys/class/tenstorrent/tenstorrent!1/tt_fw_bundle_ver").write_text("19.11.0.0\n")
    (card_host.root / "sys/class/tenstorrent/tenstorrent!0/tt_fw_bundle_ver").write_text("19.13.1.0\n")
    check = doctor(card_host, installed)["firmware"]
    assert check.status is Status.FAIL and "different firmware bundles" in check.detail


def test_a_containers_hugetlb_limit_below_what_the_cards_need_fails_with_the_pod_request(card_host, installed):
    set_up(card_host)
    (card_host.root / "sys/fs/cgroup").mkdir(parents=True)
    (card_host.root / "sys/fs/cgroup/hugetlb.1GB.max").write_text("0\n")  # kubelet's value for a page size not requested
    check = doctor(card_host, installed)["hugepages"]
    assert check.status is Status.FAIL and "may use 0 GiB" in check.detail and "hugepages-1Gi: 8Gi" in check.fix


def test_users_who_can_reach_the_docker_socket_are_named_as_able_to_give_a_container_any_card(card_host, installed,
                                                                                              monkeypatch):
    import socket

    set_up(card_host)
    run = card_host.root / "var/run"
    run.mkdir(parents=True)
    (card_host.root / "etc").mkdir(exist_ok=True)
    (card_host.root / "etc/group").write_text("root:x:0:\ndocker:x:4242:alice,bob\n")
    (card_host.root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\ncarol:x:1003:4242::/home/carol:/bin/sh\n")
    monkeypatch.chdir(run)  # a relative bind: the fixture's path is longer than a socket address may be
    with socket.socket(socket.AF_UNIX) as engine:
        engine.bind("docker.sock")
        os.chown(run / "docker.sock", 0, 4242)
        os.chmod(run / "docker.sock", 0o660)
        check = doctor(card_host, installed)["container engines"]
        assert check.status is Status.WARN and "/var/run/docker.sock (alice, bob, carol)" in check.detail
        assert "gpasswd -d USER docker" in check.fix
        os.chmod(run / "docker.sock", 0o600)  # root only
        assert doctor(card_host, installed)["container engines"].status is Status.PASS


def test_sfpi_is_looked_for_where_ttnn_looks_first_its_own_runtime_folder(card_host, ttnn_dir):
    set_up(card_host, sfpi=None)
    (ttnn_dir / "runtime/sfpi/compiler/bin").mkdir(parents=True)
    (ttnn_dir / "runtime/sfpi/compiler/bin/riscv-tt-elf-g++").write_text("")
    found = find_sfpi(ttnn_dir, system_root=card_host.root)
    assert found.found == str(ttnn_dir / "runtime/sfpi") and found.problem is None
    moved = find_sfpi(ttnn_dir, runtime_root=str(card_host.root / "elsewhere"), system_root=card_host.root)
    assert moved.roots[0] == str(card_host.root / "elsewhere/runtime/sfpi") and "sfpi not found" in moved.problem


def test_a_missing_device_node_and_a_visible_token_that_selects_nothing_fail_the_device_check(card_host, installed):
    set_up(card_host)
    (card_host.root / "dev/tenstorrent/1").unlink()
    check = doctor(card_host, installed)["device nodes"]
    assert check.status is Status.FAIL and "/dev/tenstorrent/1 missing (n300 0000:05:00.0)" in check.detail
    settings = TTSettings(inventory="sysfs", sysfs_root=str(card_host.root), scheduler="personal", visible_devices="7")
    check = Doctor(settings, probe=installed, heartbeat_wait=0).device_nodes(Doctor(settings).inventory.devices())
    assert check.status is Status.FAIL and "token '7' selects no device" in check.detail


def test_frozen_firmware_fails_the_heartbeat_check_and_names_the_card(card_host, installed):
    set_up(card_host)
    check = doctor(card_host, installed)["heartbeats"]  # nothing beats
    assert check.status is Status.FAIL and "/dev/tenstorrent/0, /dev/tenstorrent/1 did not advance" in check.detail


def test_without_ttnn_the_ttnn_check_fails_and_sfpi_is_skipped(card_host):
    set_up(card_host)
    checks = doctor(card_host, probe_ttnn)  # this Python, for real: it has no ttnn
    assert checks["ttnn"].status is Status.FAIL and "No module named 'ttnn'" in checks["ttnn"].detail
    version = "%d.%d" % sys.version_info[:2]
    if version in ("3.10", "3.12"):
        assert f"{sys.executable} -m pip install ttnn" in checks["ttnn"].fix
    else:  # no ttnn wheel exists for this Python: the fix says which to use instead, not a pip line that fails
        assert "pip install ttnn" not in checks["ttnn"].fix.split("(")[0]
        assert f"{sys.executable} is {version}" in checks["ttnn"].fix and "python3.12 -m venv" in checks["ttnn"].fix
    assert checks["sfpi"].status is Status.SKIP


def test_no_reset_tool_and_no_enforcing_service_fail_with_what_to_install_and_run(card_host, installed, service,
                                                                                 monkeypatch):
    set_up(card_host)
    monkeypatch.setenv("PATH", "/nonexistent")
    checks = doctor(card_host, installed)
    assert checks["reset tool"].status is Status.FAIL and "pipx install tt-smi" in checks["reset tool"].fix
    assert checks["scheduler service"].status is Status.FAIL and "leases are personal" in checks["scheduler service"].detail
    monkeypatch.undo()
    simulated = service()  # a service with nothing to fence
    check = doctor(card_host, installed, scheduler=simulated.address)["scheduler service"]
    assert check.status is Status.FAIL and "coordination only" in check.detail
    gone = doctor(card_host, installed, scheduler=f"unix:{card_host.root / 'no.sock'}")["scheduler service"]
    assert gone.status is Status.FAIL and "does not answer" in gone.detail


def test_the_command_prints_a_line_per_check_and_json_for_scripts_and_exits_1_when_one_fails(card_host):
    set_up(card_host, hugepages=0)
    env = {**os.environ, "JUPYTER_TT_SYSFS_ROOT": str(card_host.root), "JUPYTER_TT_INVENTORY": "sysfs",
           "JUPYTER_TT_SCHEDULER": "personal"}
    command = [sys.executable, "-m", "jupyter_tt.cli", "doctor", "--heartbeat-wait", "0.3"]
    text = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 1, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("PASS  driver ") and any(ln.startswith("FAIL  hugepages ") for ln in lines)
    assert "fix: reserve 8 hugepages of 1 GiB (4 per Wormhole card)" in text.stdout and "checks failed" in lines[-1]
    out = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 1 and report["ok"] is False and report["root"] == str(card_host.root)
    assert {c["name"]: c["status"] for c in report["checks"]}["hugepages"] == "fail"


def test_on_a_machine_with_no_card_the_doctor_says_so_first_names_what_runs_instead_and_exits_0(tmp_path):
    root = tmp_path / "laptop"
    (root / "sys/bus/pci/devices/0000:00:02.0").mkdir(parents=True)
    (root / "sys/bus/pci/devices/0000:00:02.0/vendor").write_text("0x8086\n")  # a laptop's graphics, no card
    env = {**os.environ, "JUPYTER_TT_SYSFS_ROOT": str(root), "JUPYTER_TT_INVENTORY": "sysfs",
           "JUPYTER_TT_SCHEDULER": "personal"}
    text = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "doctor"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("SKIP  card host") and "no Tenstorrent card on this machine" in lines[0]
    assert "simulated inventory" in lines[0] and "on the CPU" in lines[0]
    assert not any(line.startswith("FAIL") for line in lines) and "pip install" not in text.stdout
    assert lines[-1] == "nothing to check on this machine: it has no card (see the first line)"


def test_a_card_whose_driver_is_missing_is_still_a_card_host_and_fails_the_driver_check(tmp_path):
    from tests.support.sysfs_tree import make_host

    tree = make_host(tmp_path / "root", "n300")
    for entry in (tree.root / "sys/class/tenstorrent").iterdir():  # no driver: no class entries either
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    checks = doctor(tree, probe_ttnn)
    assert "card host" not in checks
    assert checks["driver"].status is Status.FAIL and "modprobe tenstorrent" in checks["driver"].fix
