"""Cards given to containers beside us are theirs: never granted, shown with the container's name.

STAND-IN: a fake ``docker`` on PATH (``tests/support/fake_docker.py``: records in Docker Engine 28's shape),
and the cards are the sysfs fixture's.
"""

from __future__ import annotations

import logging
import time

from jupyter_tt.devices import SysfsInventory
from jupyter_tt.devices.containers import DEVICES_LABEL, Claim, ContainerWatch, by_device, claim_of
from jupyter_tt.scheduler import Scheduler, Waiting
from tests.support.fake_docker import record
from tests.support.jupyter_servers import wait_until
from tests.support.sysfs_tree import N300, make_host


def test_a_containers_cards_are_read_as_the_vendors_tt_cli_reads_them():
    assert claim_of(record("serve", devices=["/dev/tenstorrent/1", "/dev/tenstorrent/3"])) == Claim("serve", frozenset({1, 3}))
    assert claim_of(record("all", privileged=True)) == Claim("all", None)
    assert claim_of(record("folder", mounts=["/dev/hugepages-1G", "/dev/tenstorrent/"])) == Claim("folder", None)
    # tt-model labels what it starts, whatever the container's IPC namespace.
    assert claim_of(record("labelled", ipc="private", labels={DEVICES_LABEL: "0,2"})) == Claim("labelled", frozenset({0, 2}))
    # Its own namespace without the label: UMD's chip lock is not shared, and the vendor counts nothing held.
    assert claim_of(record("private", ipc="private", devices=["/dev/tenstorrent/0"])) is None
    assert claim_of(record("nothing")) is None
    assert by_device([Claim("a", frozenset({1})), Claim("b", None)], [0, 1]) == {0: ("b",), 1: ("a", "b")}


def test_a_card_given_to_a_container_is_never_granted_and_shows_the_containers_name(tmp_path, state_dir, docker):
    docker.run([record("tt-inference-server-8b", devices=["/dev/tenstorrent/1"],
                       labels={"org.tenstorrent.tt-model": "Llama-3.1-8B-Instruct"})])
    tree = make_host(tmp_path / "root", [N300(), N300()])
    watch = ContainerWatch(["docker"])
    inventory = SysfsInventory(str(tree.root), containers=watch)
    watch.claims(wait=True)  # a server's first look (later looks refresh in the background)
    s = Scheduler(inventory, state_dir, user="alice")
    first = s.acquire(1)
    assert first.device_ids == [0]  # not the container's card 1, though nobody holds its node
    assert isinstance(s.submit(1), Waiting)
    [state] = [d for d in s.device_states() if d.id == 1]
    assert state.device.containers == ("tt-inference-server-8b",) and state.held_outside
    assert state.to_json()["containers"] == ["tt-inference-server-8b"]


def test_a_container_given_a_leased_card_is_reported_to_the_lessee_and_logged_once(tmp_path, state_dir, docker, caplog):
    tree = make_host(tmp_path / "root", [N300(), N300()])
    watch = ContainerWatch(["docker"], ttl=0.0)
    s = Scheduler(SysfsInventory(str(tree.root), containers=watch), state_dir, user="alice")
    s.inventory_ttl = 0.0  # every pass reads the cards afresh
    held = s.acquire(1)
    docker.run([record("tt-model-serve", privileged=True)])  # started afterwards, with every card
    watch.claims(wait=True)
    caplog.set_level(logging.WARNING, logger="jupyter_tt.scheduler")
    s.reconcile()
    s.reconcile()
    said = [r.message for r in caplog.records if "container tt-model-serve" in r.message]
    assert said == [f"jupyter-tt: container tt-model-serve was given device {held.device_ids[0]}, which lease "
                    f"{held.id} of alice holds"]
    [state] = [d for d in s.device_states() if d.id == held.device_ids[0]]
    assert state.lease_id == held.id and state.device.containers == ("tt-model-serve",)


def test_without_a_runtime_the_cards_are_read_from_the_driver_alone_and_that_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, no podman
    watch = ContainerWatch()
    assert watch.claims(wait=True) == [] and "no container runtime (docker, podman) on PATH" in watch.problem


def test_a_hung_docker_delays_no_look_at_the_cards(tmp_path, docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_SLEEP", "5")
    tree = make_host(tmp_path / "root", [N300(), N300()])
    inventory = SysfsInventory(str(tree.root), containers=ContainerWatch(["docker"], timeout=1.0))
    started = time.monotonic()
    assert [d.containers for d in inventory.devices()] == [(), ()]
    assert time.monotonic() - started < 1.0  # the refresh runs beside, with its own deadline
    wait_until(lambda: inventory.containers.problem, timeout=10, message="the refresh to give up")
    assert inventory.containers.problem == "docker did not answer within 1 s"
