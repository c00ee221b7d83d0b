"""Choosing a kernel's devices after it started: the API JupyterLab's picker calls, on real kernels.

``POST /jupyter-tt/api/kernels/<id>/devices`` restarts the kernel on a lease of what was chosen,
waiting in the queue if it must. The browser side is in test_lab_ui.py.
"""

from __future__ import annotations

import pytest

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Scheduler
from tests.support.jupyter_servers import wait_until

pytestmark = pytest.mark.usefixtures("kernelspecs")
SPEC = "n150x1,n300x2"
HOST = f"simulated:{SPEC}"


def choose(server, kernel_id, devices, card_type="any"):
    return server.http.post(f"/jupyter-tt/api/kernels/{kernel_id}/devices", json={"devices": devices, "card_type": card_type})


def shape(lease):
    return lease and (len(lease["devices"]), lease["card_types"])


def test_the_generic_kernel_starts_on_no_device_and_restarts_on_the_two_n300_chosen(servers, state_dir):
    server = servers(inventory=HOST)
    kernel_id = server.start_kernel("tenstorrent")
    assert server.lease_of(kernel_id) is None
    answer = choose(server, kernel_id, 2, "n300")
    assert answer.status_code == 202 and answer.json()["status"] == "restarting"
    lease = wait_until(lambda: shape(server.lease_of(kernel_id)) == (2, ["n300"]) and server.lease_of(kernel_id),
                       timeout=60, message="the kernel restarted on 2 n300")
    assert kernel_id in [k["id"] for k in server.json("/api/kernels")]  # the same kernel, restarted
    choose(server, kernel_id, 1, "n150")
    wait_until(lambda: shape(server.lease_of(kernel_id)) == (1, ["n150"]), timeout=60, message="the kernel on 1 n150")
    [old] = [h for h in Scheduler(SimulatedInventory(SPEC), state_dir, user="x").history()
             if h["lease_id"] == lease["id"]]
    assert old["end_reason"] == "devices changed to 1× n150 from JupyterLab"
    choose(server, kernel_id, 0)
    wait_until(lambda: server.lease_of(kernel_id) is None, timeout=60, message="the kernel on no device")


def test_a_choice_that_must_wait_restarts_the_kernel_once_the_devices_free(servers, state_dir):
    server = servers(inventory=HOST)
    other = Scheduler(SimulatedInventory(SPEC), state_dir, user="zoe")
    held = other.acquire(2, "n300")
    kernel_id = server.start_kernel("tt-n150")
    assert choose(server, kernel_id, 2, "n300").status_code == 202
    wait_until(lambda: any(r["kernel_id"] == kernel_id for r in server.json("/jupyter-tt/api/queue")["requests"]),
               message="the kernel's request in the queue")
    other.release(held.id)
    wait_until(lambda: shape(server.lease_of(kernel_id)) == (2, ["n300"]), timeout=60, message="the kernel on 2 n300")


@pytest.mark.parametrize("body, message", [
    ({"devices": 3, "card_type": "n300"}, "this host has 2 n300s: ask for at most 2"),
    ({"devices": 3, "card_type": "any"}, "this host has 2 devices of one card type"),  # a lease is of one type
    ({"devices": 1, "card_type": "n400"}, "unknown card type"),
    ({"devices": "two"}, 'send {"devices": N'),
    ({"devices": -1}, "0 or more"),
])
def test_a_choice_the_host_cannot_meet_is_refused_and_the_kernel_keeps_its_devices(servers, body, message):
    server = servers(inventory=HOST)
    kernel_id = server.start_kernel("tt-n150")
    before = server.lease_of(kernel_id)
    answer = server.http.post(f"/jupyter-tt/api/kernels/{kernel_id}/devices", json=body)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text
    assert server.lease_of(kernel_id) == before


def test_a_kernel_of_another_provisioner_or_none_at_all_is_a_clear_error(servers):
    server = servers(inventory=HOST)
    plain = server.start_kernel("python3")
    answer = choose(server, plain, 1)
    assert answer.status_code == 400 and "does not get its devices from jupyter-tt" in answer.json()["message"]
    assert choose(server, "no-such-kernel", 1).status_code == 404
