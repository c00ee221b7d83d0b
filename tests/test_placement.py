"""Placement: which free devices a request gets."""

from dataclasses import replace

import pytest

from jupyter_tt.devices import SimulatedInventory, SysfsInventory
from jupyter_tt.errors import ConfigError, RequestError
from jupyter_tt.scheduler import DeviceRequest, place
from tests.support.sysfs_tree import make_host


def loudbox(tmp_path):
    return SysfsInventory(str(make_host(tmp_path, "loudbox").root)).devices()


def test_two_devices_come_from_one_numa_node(tmp_path):
    devices = loudbox(tmp_path)
    chosen = place(devices, 2, "n300")
    assert [d.id for d in chosen] == [0, 1]
    assert len({d.numa_node for d in chosen}) == 1


def test_the_fullest_numa_node_that_fits_is_used_to_keep_others_whole(tmp_path):
    devices = loudbox(tmp_path)
    free = [d for d in devices if d.id != 2]  # node 0 has 2 free, node 1 has 1 free
    assert [d.id for d in place(free, 1, "n300")] == [3]
    assert [d.id for d in place(free, 2, "n300")] == [0, 1]


def test_a_request_larger_than_any_node_spans_nodes(tmp_path):
    devices = loudbox(tmp_path)
    assert [d.id for d in place(devices, 3, "n300")] == [0, 1, 2]
    assert [d.id for d in place(devices, 4, "n300")] == [0, 1, 2, 3]


def test_placement_is_deterministic_whatever_the_input_order(tmp_path):
    devices = loudbox(tmp_path)
    assert place(devices, 2, "any") == place(list(reversed(devices)), 2, "any")


def test_unhealthy_devices_are_never_placed(tmp_path):
    devices = loudbox(tmp_path)
    devices[0] = replace(devices[0], problem="too hot")
    assert [d.id for d in place(devices, 2, "n300")] == [2, 3]
    assert place(devices, 4, "n300") is None


def test_any_prefers_the_smaller_card_and_never_mixes_types():
    devices = SimulatedInventory("n150x1,n300x2").devices()
    assert [d.card_type for d in place(devices, 1, "any")] == ["n150"]
    assert [d.card_type for d in place(devices, 2, "any")] == ["n300", "n300"]
    assert place(devices, 3, "any") is None


def test_not_enough_free_devices_gives_none():
    assert place(SimulatedInventory("n150x2").devices(), 1, "n300") is None


def test_the_most_one_lease_can_have_is_per_card_type_and_for_any_the_commonest_type():
    from jupyter_tt.scheduler import most_at_once

    devices = SimulatedInventory("n150x1,n300x3").devices()
    assert [most_at_once(t, devices) for t in ("n150", "n300", "any")] == [1, 3, 3]
    assert most_at_once("any", []) == 0


def test_one_parse_reads_a_device_request_the_same_way_wherever_it_comes_from():
    assert DeviceRequest.parse(2, " N300 ") == DeviceRequest(devices=2, card_type="n300")
    assert DeviceRequest.parse(0, None) == DeviceRequest(devices=0, card_type="any")  # a kernel with no device
    for devices in (-1, True, 1.0, "1"):
        with pytest.raises(RequestError, match=r"whole number of devices 0 or more"):
            DeviceRequest.parse(devices)
    with pytest.raises(RequestError, match=r"a request must be a whole number of devices of at least 1, not 0"):
        DeviceRequest.parse(0, least=1, what="a request")
    with pytest.raises(ConfigError, match=r"unknown card type 'n400'.*or 'any'"):  # the caller's kind of error
        DeviceRequest.parse(1, "n400", error=ConfigError)
