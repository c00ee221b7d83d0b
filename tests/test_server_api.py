"""The REST API, events and metrics of the server extension, over real HTTP."""

import asyncio
import json
import time

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Scheduler

pytestmark = pytest.mark.usefixtures("kernelspecs")

ENDPOINTS = ["/jupyter-tt/api/devices", "/jupyter-tt/api/leases", "/jupyter-tt/api/queue", "/jupyter-tt/api/usage"]


def test_unauthenticated_requests_are_refused_with_403(servers):
    server = servers()
    for path in ENDPOINTS:
        assert httpx.get(server.url + path).status_code == 403, path
        assert httpx.get(server.url + path, headers={"Authorization": "token wrong"}).status_code == 403, path
    assert httpx.delete(server.url + "/jupyter-tt/api/leases/lease-123").status_code == 403


def test_devices_api_has_the_contract_fields_and_labels_simulation(servers):
    body = servers(inventory="simulated:n150x1,n300x1").json("/jupyter-tt/api/devices")
    assert body["inventory"]["kind"] == "simulated" and body["inventory"]["simulated"] is True
    assert "SIMULATED" in body["inventory"]["label"]
    n150, n300 = body["devices"]
    for device in body["devices"]:
        assert {"id", "path", "bdf", "card_type", "chips", "state", "lease_id", "telemetry"} <= device.keys()
        assert {"temperature_c", "power_w", "aiclk_mhz"} <= device["telemetry"].keys()
        assert device["state"] == "free" and device["simulated"] is True
    assert (n150["card_type"], n150["chips"], n300["card_type"], n300["chips"]) == ("n150", 1, "n300", 2)


def test_leases_api_lists_every_lease_on_the_host_whichever_server_made_it(servers, state_dir):
    server = servers(user="alice")
    other = Scheduler(SimulatedInventory("n300x4"), state_dir, user="zoe", server="another-server")
    foreign = other.acquire(2)
    kernel_id = server.start_kernel("tt-n300")
    leases = {lease["user"]: lease for lease in server.leases()}
    assert leases["zoe"]["id"] == foreign.id and leases["zoe"]["server"] == "another-server"
    assert leases["alice"]["kernel_id"] == kernel_id
    for lease in leases.values():
        assert {"id", "devices", "user", "kernel_id", "server", "pid", "since"} <= lease.keys()


def test_the_notebook_that_waits_and_then_holds_devices_is_named_in_queue_lease_and_devices(servers, state_dir):
    """jupyter_server names a session's notebook in the kernel's environment; the panel shows it."""
    import threading

    from tests.support.jupyter_servers import wait_until

    server = servers(inventory="simulated:n300x1", args=["--TTSettings.telemetry_interval=0.2"])
    zoe = Scheduler(SimulatedInventory("n300x1"), state_dir, user="zoe")
    held = zoe.acquire(1)
    (server.workdir / "work").mkdir()
    created = {}
    body = {"path": "work/analysis.ipynb", "type": "notebook", "name": "analysis.ipynb", "kernel": {"name": "tt-n300"}}
    thread = threading.Thread(target=lambda: created.update(response=server.http.post("/api/sessions", json=body)))
    thread.start()  # the session's kernel waits in the queue until zoe's lease ends
    wait_until(lambda: server.json("/jupyter-tt/api/queue")["requests"], message="the kernel to queue")
    (request,) = server.json("/jupyter-tt/api/queue")["requests"]
    # notebook: the file on the host (any server's kernels); notebook_path: the same as a path of this server
    assert request["notebook"] == str(server.workdir / "work/analysis.ipynb")
    assert request["notebook_path"] == "work/analysis.ipynb" and request["position"] == 1
    zoe.release(held.id)
    thread.join(60)
    assert created["response"].status_code == 201, created["response"].text
    kernel_id = created["response"].json()["kernel"]["id"]
    lease = server.lease_of(kernel_id)
    assert lease["notebook_path"] == "work/analysis.ipynb"
    (device,) = server.json("/jupyter-tt/api/devices")["devices"]
    assert (device["state"], device["kernel_id"], device["notebook_path"]) == ("leased", kernel_id, "work/analysis.ipynb")
    assert device["path"] == "/dev/tenstorrent/0"  # the device node, as before
    # The telemetry history grows every telemetry_interval: [time, temperature_c, power_w], oldest first.
    wait_until(lambda: len(server.json("/jupyter-tt/api/devices")["devices"][0]["telemetry_history"]) >= 3)
    history = server.json("/jupyter-tt/api/devices")["devices"][0]["telemetry_history"]
    times = [t for t, _, _ in history]
    assert times == sorted(times) and all(20 < temp < 90 and watts > 0 for _, temp, watts in history)


def test_a_state_file_of_the_previous_schema_is_migrated_in_place(state_dir):
    """A host upgraded while its state file exists: version 1 had no notebook columns."""
    import sqlite3
    from pathlib import Path

    from jupyter_tt.scheduler import store

    Path(state_dir).mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(Path(state_dir) / f"{SimulatedInventory('n300x1').key}.sqlite3")
    old.executescript(
        store.SCHEMA.replace("    notebook TEXT,                    -- the kernel's session path, where the asker knew it\n", "")
        + "PRAGMA user_version=1;"
    )
    assert "notebook" not in {r[1] for r in old.execute("PRAGMA table_info(leases)")}
    old.close()
    scheduler = Scheduler(SimulatedInventory("n300x1"), state_dir, user="alice")
    lease = scheduler.acquire(1, notebook="a.ipynb")
    assert scheduler.get_lease(lease.id).notebook == "a.ipynb"
    scheduler.release(lease.id)
    assert scheduler.history()[0]["notebook"] == "a.ipynb"


def test_a_user_can_release_their_own_lease_but_never_anothers(servers, state_dir):
    server = servers(user="alice")
    theirs = Scheduler(SimulatedInventory("n300x4"), state_dir, user="bob").acquire(1)
    mine = Scheduler(SimulatedInventory("n300x4"), state_dir, user="alice").acquire(1)
    refused = server.http.delete(f"/jupyter-tt/api/leases/{theirs.id}")
    assert refused.status_code == 403
    assert refused.json()["message"] == f"lease {theirs.id} belongs to bob: only they can release it"
    assert server.http.delete(f"/jupyter-tt/api/leases/{mine.id}").status_code == 204
    assert [lease["id"] for lease in server.leases()] == [theirs.id]
    missing = server.http.delete(f"/jupyter-tt/api/leases/{mine.id}")
    assert missing.status_code == 404 and "no active lease" in missing.json()["message"]


def test_usage_api_reports_device_hours_and_rejects_a_bad_since(servers):
    server = servers()
    server.shutdown_kernel(server.start_kernel("tt-n300"))
    answer = server.json("/jupyter-tt/api/usage")
    [entry] = answer["usage"]
    assert entry["leases"] == 1 and entry["device_hours"] > 0
    assert answer["user"] == entry["user"]  # whom this server accounts to: the panel shows their hours
    assert server.json(f"/jupyter-tt/api/usage?since={time.time() + 60}")["usage"] == []
    bad = server.get("/jupyter-tt/api/usage?since=yesterday")
    assert bad.status_code == 400 and "seconds since the epoch" in bad.json()["message"]


def test_lease_changes_are_emitted_on_the_event_stream(servers):
    server = servers()

    async def watch():
        request = HTTPRequest(
            server.url.replace("http", "ws") + "/api/events/subscribe",
            headers={"Authorization": f"token {server.token}"},
        )
        ws = await websocket_connect(request)
        kernel_id = await asyncio.to_thread(server.start_kernel, "tt-n300")
        await asyncio.to_thread(server.shutdown_kernel, kernel_id)
        events = []
        while not any(e.get("action") == "lease-ended" for e in events):
            message = await asyncio.wait_for(ws.read_message(), 15)
            event = json.loads(message)
            if event.get("schema_id", "").endswith("jupyter_tt/lease/v1"):
                events.append(event)
        ws.close()
        return kernel_id, events

    kernel_id, events = asyncio.run(watch())
    granted = next(e for e in events if e["action"] == "lease-granted")
    ended = next(e for e in events if e["action"] == "lease-ended")
    assert granted["kernel_id"] == kernel_id and granted["simulated"] is True and len(granted["devices"]) == 1
    assert ended["lease_id"] == granted["lease_id"] and ended["reason"] == "kernel shut down"


def test_queue_changes_are_emitted_on_the_event_stream(servers, state_dir):
    server = servers(inventory="simulated:n300x1")
    other = Scheduler(SimulatedInventory("n300x1"), state_dir, user="zoe")
    held = other.acquire(1)

    async def watch():
        request = HTTPRequest(
            server.url.replace("http", "ws") + "/api/events/subscribe",
            headers={"Authorization": f"token {server.token}"},
        )
        ws = await websocket_connect(request)
        waiting = other.submit(1)
        events = []
        while len(events) < 1:
            event = json.loads(await asyncio.wait_for(ws.read_message(), 15))
            if event.get("action", "").startswith("request-"):
                events.append(event)
        other.cancel(waiting.request_id)
        while len(events) < 2:
            event = json.loads(await asyncio.wait_for(ws.read_message(), 15))
            if event.get("action", "").startswith("request-"):
                events.append(event)
        ws.close()
        return waiting, events

    waiting, events = asyncio.run(watch())
    assert [e["action"] for e in events] == ["request-queued", "request-left"]
    assert events[0]["request_id"] == waiting.request_id and events[0]["position"] == 1 and events[0]["user"] == "zoe"
    other.release(held.id)


def test_metrics_expose_telemetry_and_lease_gauges(servers):
    server = servers(inventory="simulated:n300x2")
    server.start_kernel("tt-n300")
    text = server.get("/metrics").text
    assert 'jupyter_tt_device_leased{bdf="0000:01:00.0",card_type="n300",device="0",simulated="true"} 1.0' in text
    assert 'jupyter_tt_device_leased{bdf="0000:01:01.0",card_type="n300",device="1",simulated="true"} 0.0' in text
    assert "jupyter_tt_device_temperature_celsius{" in text and "jupyter_tt_device_power_watts{" in text
    assert "jupyter_tt_leases 1.0" in text and "jupyter_tt_queue_requests 0.0" in text


def test_a_bad_inventory_setting_is_named_in_the_server_log(servers):
    server = servers(inventory="simulated:n999")
    assert server.get("/jupyter-tt/api/devices").status_code == 404  # the extension did not load...
    assert "unknown card type 'n999' in simulated inventory spec" in server.log_text()  # ...and says why
