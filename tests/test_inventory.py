"""Inventory backends: the sysfs reader on generated driver trees, and the simulated one."""

import threading
import time

import pytest

from jupyter_tt.devices import SimulatedInventory, SysfsInventory, open_inventory
from jupyter_tt.devices.sample import InventorySample
from jupyter_tt.errors import ConfigError
from tests.support.sysfs_tree import Card, make_host


def test_n150_host_lists_one_single_chip_device_with_telemetry(host):
    tree = host("n150")
    [device] = SysfsInventory(str(tree.root)).devices()
    assert (device.id, device.card_type, device.chips, device.bdf) == (0, "n150", 1, "0000:04:00.0")
    assert device.path == "/dev/tenstorrent/0"
    assert device.numa_node == 0 and device.serial == "TT1000"
    assert device.telemetry.temperature_c == 48.5
    assert device.telemetry.power_w == 65.0
    assert device.telemetry.voltage_v == 0.85 and device.telemetry.current_a == 70.0
    assert device.telemetry.aiclk_mhz == 1000
    assert device.firmware == {"fw_bundle": "18.3.0", "arc_fw": "2.32.0", "eth_fw": "7.0.0"}
    assert device.healthy and not device.simulated


def test_n300_is_one_device_node_with_two_chips(host):
    [device] = SysfsInventory(str(host("n300").root)).devices()
    assert (device.card_type, device.chips) == ("n300", 2)


def test_loudbox_lists_four_n300_on_two_numa_nodes(host):
    devices = SysfsInventory(str(host("loudbox").root)).devices()
    assert [d.card_type for d in devices] == ["n300"] * 4
    assert [d.numa_node for d in devices] == [0, 0, 1, 1]
    assert sum(d.chips for d in devices) == 8
    assert len({d.bdf for d in devices}) == 4


def test_mixed_host_keeps_each_card_type(host):
    devices = SysfsInventory(str(host("mixed").root)).devices()
    assert [d.card_type for d in devices] == ["n150", "n300", "n150", "n300"]


def test_missing_optional_attributes_are_unknown_not_errors(tmp_path):
    tree = make_host(tmp_path, [Card(card_type="n150", temperature_c=None, power_w=None, heartbeat=None, aiclk=None, firmware={})])
    [device] = SysfsInventory(str(tree.root)).devices()
    assert device.telemetry.temperature_c is None and device.telemetry.power_w is None
    assert device.telemetry.aiclk_mhz is None and device.firmware == {}
    assert device.healthy


def test_unknown_or_missing_card_type_is_listed_as_unknown(tmp_path):
    tree = make_host(tmp_path, [Card(card_type="x9000"), Card(card_type=None)])
    assert [d.card_type for d in SysfsInventory(str(tree.root)).devices()] == ["unknown", "unknown"]


def test_device_hotter_than_its_max_is_unhealthy(tmp_path):
    tree = make_host(tmp_path, [Card(temperature_c=95.0, temperature_max_c=90.0)])
    [device] = SysfsInventory(str(tree.root)).devices()
    assert not device.healthy
    assert "95.0 °C is above its max 90.0 °C" in device.problem


def test_missing_device_node_is_unhealthy(tmp_path):
    tree = make_host(tmp_path, [Card(device_node=False)])
    [device] = SysfsInventory(str(tree.root)).devices()
    assert "is missing" in device.problem


def test_vanished_device_stays_listed_as_unhealthy(host):
    tree = host("loudbox")
    inventory = SysfsInventory(str(tree.root))
    assert all(d.healthy for d in inventory.devices())
    tree.remove(2)
    devices = inventory.devices()
    assert [d.id for d in devices] == [0, 1, 2, 3]
    assert "vanished" in devices[2].problem
    assert [d.healthy for d in devices] == [True, True, False, True]


def test_heartbeat_that_stops_advancing_makes_device_unhealthy(host):
    tree = host("n300")
    now = [0.0]
    inventory = SysfsInventory(str(tree.root), heartbeat_timeout=10, clock=lambda: now[0])
    assert inventory.devices()[0].healthy
    now[0] = 5.0
    tree.set(0, heartbeat=1001)
    assert inventory.devices()[0].healthy
    now[0] = 16.0  # 11 s without change
    [device] = inventory.devices()
    assert "heartbeat stopped at 1001" in device.problem
    tree.set(0, heartbeat=1002)
    assert inventory.devices()[0].healthy


def test_driver_pids_file_gives_holders(tmp_path):
    tree = make_host(tmp_path, [Card(holders=[4242, 17])])
    assert SysfsInventory(str(tree.root)).devices()[0].holders == (17, 4242)


@pytest.mark.parametrize(
    "spec, expected",
    [("n300x4", ["n300"] * 4), ("n150x2,n300x1", ["n150", "n150", "n300"]), ("n150", ["n150"])],
)
def test_simulated_inventory_follows_its_spec_and_is_labelled(spec, expected):
    inventory = SimulatedInventory(spec)
    devices = inventory.devices()
    assert [d.card_type for d in devices] == expected
    assert all(d.simulated for d in devices)
    assert inventory.describe()["simulated"] is True
    assert "SIMULATED" in inventory.describe()["label"]
    assert len({d.bdf for d in devices}) == len(devices)


@pytest.mark.parametrize(
    "spec, message",
    [("n999x2", "unknown card type 'n999'"), ("n300x0", "1 to 4096"), ("n300 x 2", "cannot read"), ("", "empty")],
)
def test_bad_simulated_spec_says_what_to_write(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        SimulatedInventory(spec)
    assert "n300x4" in str(info.value) or "known types" in str(info.value)


def test_auto_uses_real_devices_when_present_else_simulates_n300x4(host, tmp_path):
    tree = host("n150")
    assert open_inventory("auto", str(tree.root)).kind == "sysfs"
    empty = tmp_path / "empty"
    empty.mkdir()
    fallback = open_inventory("auto", str(empty))
    assert fallback.kind == "simulated" and fallback.spec == "n300x4"


def test_sysfs_inventory_without_devices_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no Tenstorrent device.*tt-kmd.*simulated"):
        open_inventory("sysfs", str(tmp_path))


def test_unknown_inventory_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="use 'auto', 'sysfs' or 'simulated:<spec>'"):
        open_inventory("cloud")


def pod_of_a_loudbox(tmp_path, given=(1, 3), marker=".dockerenv"):
    """A LoudBox's sysfs (all four cards, as sysfs is not namespaced) seen from a container that was given ``given``."""
    tree = make_host(tmp_path, [Card(card_type="n300", device_node=i in given) for i in range(4)])
    if marker:
        (tree.root / marker).parent.mkdir(parents=True, exist_ok=True)
        (tree.root / marker).write_text("")
    return tree


@pytest.mark.parametrize("marker", [".dockerenv", "run/.containerenv"])
def test_in_a_container_only_the_cards_whose_nodes_it_was_given_are_listed_and_all_are_healthy(tmp_path, marker):
    inventory = SysfsInventory(str(pod_of_a_loudbox(tmp_path, marker=marker).root))
    assert inventory.container and inventory.describe()["container"] is True
    assert [(d.id, d.healthy) for d in inventory.devices()] == [(1, True), (3, True)]


def test_outside_a_container_a_card_without_its_node_is_still_reported_unhealthy(tmp_path):
    devices = SysfsInventory(str(pod_of_a_loudbox(tmp_path, marker=None).root)).devices()
    assert [(d.id, d.healthy) for d in devices] == [(0, False), (1, True), (2, False), (3, True)]


def test_in_a_container_a_card_given_and_then_lost_is_reported_not_dropped(tmp_path):
    tree = pod_of_a_loudbox(tmp_path)
    inventory = SysfsInventory(str(tree.root))
    inventory.devices()
    (tree.root / "dev/tenstorrent/3").unlink()
    assert [(d.id, d.healthy) for d in inventory.devices()] == [(1, True), (3, False)]


@pytest.mark.parametrize("visible", ["0,2", "0000:04:00.0, 0000:06:00.0", "0,0000:06:00.0"])
def test_visible_devices_by_number_or_bdf_narrow_the_inventory_and_its_state(host, visible):
    root = str(host("loudbox").root)
    inventory = SysfsInventory(root, visible=visible)
    assert [d.id for d in inventory.devices()] == [0, 2]
    assert inventory.key != SysfsInventory(root).key  # another device set: another scheduler state
    assert open_inventory("sysfs", root, visible).key == inventory.key


#: A LoudBox whose driver numbered its cards in another order than their PCI addresses: node N has bus
#: BUSES[N], so in BDF order (tt-umd's logical ids 0..3) the cards are nodes 2, 0, 3, 1.
BUSES = [0x21, 0x61, 0x01, 0x41]


@pytest.mark.parametrize(("visible", "nodes"), [
    ("0", [2]), ("1,3", [0, 1]), ("0000:41:00.0", [3]), ("41:00", [3]), ("0,0000:61:00.0", [1, 2]),
])
def test_visible_integers_are_tt_umds_logical_ids_in_bdf_order_and_bdfs_select_as_they_are(tmp_path, visible, nodes):
    tree = make_host(tmp_path / "root", "loudbox", buses=BUSES)
    inventory = SysfsInventory(str(tree.root), visible=visible)
    assert [d.id for d in inventory.devices()] == nodes and inventory.visible_problems == []


def test_in_a_pod_logical_ids_count_only_the_nodes_it_was_given(tmp_path):
    tree = make_host(tmp_path / "root", "loudbox", buses=BUSES)
    for n in (2, 3):  # the pod has nodes 0 and 1 (buses 21 and 61): its logical ids 0 and 1
        (tree.root / f"dev/tenstorrent/{n}").unlink()
    assert [d.id for d in SysfsInventory(str(tree.root), visible="1", container=True).devices()] == [1]


def test_a_visible_token_that_selects_no_device_selects_none_and_says_why(tmp_path):
    tree = make_host(tmp_path / "root", "loudbox", buses=BUSES)
    inventory = SysfsInventory(str(tree.root), visible="4,0000:99:00.0")
    assert inventory.devices() == []
    assert [p.split(" selects")[0] for p in inventory.visible_problems] == [
        "TT_VISIBLE_DEVICES token '0000:99:00.0'", "TT_VISIBLE_DEVICES token '4'"]
    assert "0 to 3 here (devices in BDF order)" in inventory.visible_problems[1]


def test_a_node_that_vanishes_does_not_shift_the_logical_ids_onto_another_card(tmp_path):
    tree = make_host(tmp_path / "root", "loudbox", buses=BUSES)
    inventory = SysfsInventory(str(tree.root), visible="1")  # node 0 (bus 21)
    assert [d.id for d in inventory.devices()] == [0]
    (tree.root / "dev/tenstorrent/2").unlink()  # bus 01 goes: BDF index 1 would now be node 3
    assert [(d.id, d.healthy) for d in inventory.devices()] == [(0, True)]


def test_an_inherited_tt_visible_devices_limits_the_server_but_a_leases_own_does_not(monkeypatch):
    from jupyter_tt.config import TTSettings

    monkeypatch.delenv("JUPYTER_TT_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("JUPYTER_TT_LEASE", raising=False)
    monkeypatch.setenv("TT_VISIBLE_DEVICES", "2,3")  # from a device plugin
    settings = TTSettings()
    assert settings.visible_devices == "2,3" and settings.environment()["JUPYTER_TT_VISIBLE_DEVICES"] == "2,3"
    monkeypatch.setenv("JUPYTER_TT_LEASE", "lease-1")  # a kernel's: TT_VISIBLE_DEVICES is its lease's
    assert TTSettings().visible_devices == ""
    monkeypatch.setenv("JUPYTER_TT_VISIBLE_DEVICES", "2,3")  # what its server passed on
    assert TTSettings().visible_devices == "2,3"


class CountedReads(SimulatedInventory):
    """Counts readings; ``gate`` (when set) holds each reading until it is opened."""

    def __init__(self, spec="n300x2"):
        super().__init__(spec)
        self.reads = 0
        self.gate: threading.Event | None = None
        self.reading = threading.Event()

    def devices(self):
        self.reads += 1
        self.reading.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never let the reading finish"
        return super().devices()


def test_a_shared_reading_is_reused_while_recent_and_read_again_when_asked_fresh():
    inventory = CountedReads()
    sample = InventorySample(inventory)
    first = sample.get(5.0)
    assert sample.get(5.0) is first and inventory.reads == 1
    assert sample.get() is not first and inventory.reads == 2  # max_age 0: a reading begun after the call


def test_a_caller_that_may_not_wait_takes_the_last_reading_while_another_thread_reads_the_cards():
    inventory = CountedReads()
    sample = InventorySample(inventory)
    last = sample.get()
    inventory.gate, inventory.reading = threading.Event(), threading.Event()
    reader = threading.Thread(target=sample.get)
    reader.start()
    try:
        assert inventory.reading.wait(10)
        started = time.monotonic()
        assert sample.get(0.0, wait=False) is last  # not held up by the reading under way
        assert time.monotonic() - started < 1
    finally:
        inventory.gate.set()
        reader.join(10)
    assert inventory.reads == 2


def test_callers_that_asked_while_the_cards_were_read_share_the_next_reading_rather_than_each_read_them():
    inventory = CountedReads()
    sample = InventorySample(inventory)
    inventory.gate = threading.Event()
    first = threading.Thread(target=sample.get)
    first.start()
    assert inventory.reading.wait(10)
    results = []
    waiting = [threading.Thread(target=lambda: results.append(sample.get())) for _ in range(2)]
    for thread in waiting:  # both ask while the first reading runs: it began too early for them
        thread.start()
    time.sleep(0.1)
    inventory.gate.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert inventory.reads == 2 and results[0] is results[1]


def test_a_service_reader_reports_the_cards_as_the_passes_last_read_them_without_reading_them_itself(tmp_path):
    from jupyter_tt.scheduler import Scheduler

    inventory = CountedReads()
    scheduler = Scheduler(inventory, str(tmp_path / "state"), user="root", mode="service")
    scheduler.reconcile()  # a pass reads the cards
    reader = scheduler.reader()
    reader.report_age = 60.0  # as SchedulerService.reader sets it
    read = inventory.reads
    states = [reader.report().devices for _ in range(3)]
    assert inventory.reads == read and [d.id for d in states[0]] == [0, 1]
    assert scheduler.report().devices and inventory.reads == read + 1  # report_age 0 (personal mode): read now
