"""Idle devices go to whoever waits: real Jupyter servers and kernels on a simulated n150 host.

The server runs with ``idle_timeout`` 2 s and ``idle_grace`` 1 s; the request that waits is this
test process's own (another user's, as the scheduler sees it). What a kernel is doing comes from the
server's own view of it (jupyter_server's execution state and last activity).
"""

from __future__ import annotations

import json
import time

import pytest

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Lease, Scheduler, Waiting
from tests.support.jupyter_servers import kernel_client, wait_until

pytestmark = pytest.mark.usefixtures("kernelspecs")
IDLE = ["--TTSettings.idle_timeout=2", "--TTSettings.idle_grace=1"]


def kernels(server) -> list[str]:
    return [k["id"] for k in server.json("/api/kernels")]


def history(state_dir):
    return Scheduler(SimulatedInventory("n150x1"), state_dir, user="bob").history()


def test_an_idle_kernel_is_warned_then_shut_down_and_its_card_goes_to_the_waiting_request(servers, state_dir):
    server = servers(inventory="simulated:n150x1", args=IDLE)
    kernel_id = server.start_kernel("tt-n150")
    lease_id = server.lease_of(kernel_id)["id"]
    bob = Scheduler(SimulatedInventory("n150x1"), state_dir, user="bob")
    waiting = bob.submit(1, "n150")
    assert isinstance(waiting, Waiting)
    granted = wait_until(lambda: isinstance(lease := bob.check(waiting.request_id), Lease) and lease, timeout=30,
                         message="the idle kernel's card to go to the waiting request")
    wait_until(lambda: kernel_id not in kernels(server), message="the idle kernel to be gone")
    [ended] = [h for h in history(state_dir) if h["lease_id"] == lease_id]
    assert ended["end_reason"].startswith("idle, needed by another request (idle for ")
    assert "is idle for" in server.log_text() and "while another request waits for its devices" in server.log_text()
    bob.release(granted.id)


SLOW_COMM = """
import time
from comm import get_comm_manager
get_comm_manager().register_target("slow", lambda comm, _: comm.on_msg(lambda _: time.sleep(15)))
"""


def run_a_long_cell(client) -> None:
    client.execute("import time; time.sleep(15)")


def handle_a_long_comm_message(client) -> None:
    """A widget's callback that takes a while (a model's generation): the comm message is in flight."""
    client.execute(SLOW_COMM, reply=True, timeout=30)
    for msg_type, content in [("comm_open", {"comm_id": "c1", "target_name": "slow", "data": {}}),
                              ("comm_msg", {"comm_id": "c1", "data": {"go": True}})]:
        client.shell_channel.send(client.session.msg(msg_type, content))


@pytest.mark.parametrize("keep_busy", [run_a_long_cell, handle_a_long_comm_message], ids=["execution", "comm message"])
def test_a_busy_kernel_keeps_its_card_while_a_request_waits(servers, state_dir, keep_busy):
    server = servers(inventory="simulated:n150x1", args=IDLE)
    kernel_id = server.start_kernel("tt-n150")
    client = kernel_client(kernel_id)
    try:
        server.watched(kernel_id, client)
        keep_busy(client)
        # The request waits only once the kernel is at work (nobody waiting before: nothing to take).
        wait_until(lambda: server.json(f"/api/kernels/{kernel_id}")["execution_state"] == "busy", timeout=30,
                   message="the kernel to get to work")
        bob = Scheduler(SimulatedInventory("n150x1"), state_dir, user="bob")
        waiting = bob.submit(1, "n150")
        time.sleep(6)  # three times the timeout and the grace together
        assert kernel_id in kernels(server) and server.lease_of(kernel_id) is not None
        assert isinstance(bob.check(waiting.request_id), Waiting)
        bob.cancel(waiting.request_id)
    finally:
        client.stop_channels()


def test_an_idle_kernel_keeps_its_card_while_nobody_waits(servers, state_dir):
    server = servers(inventory="simulated:n150x1", args=IDLE)
    kernel_id = server.start_kernel("tt-n150")
    time.sleep(6)
    assert kernel_id in kernels(server) and server.lease_of(kernel_id) is not None
    assert "is idle for" not in server.log_text()


def test_the_idle_warning_is_a_lease_event_with_how_long_and_how_long_is_left(servers, state_dir):
    """What JupyterLab shows: the event names the kernel's notebook, its idle time and the grace left."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    server = servers(inventory="simulated:n150x1", args=["--TTSettings.idle_timeout=2", "--TTSettings.idle_grace=30"])
    kernel_id = server.start_kernel("tt-n150")
    bob = Scheduler(SimulatedInventory("n150x1"), state_dir, user="bob")

    async def watch():
        ws = await websocket_connect(HTTPRequest(server.url.replace("http", "ws") + "/api/events/subscribe",
                                                 headers={"Authorization": f"token {server.token}"}))
        waiting = bob.submit(1, "n150")
        while True:
            event = json.loads(await asyncio.wait_for(ws.read_message(), 30))
            if event.get("action") == "idle-warning":
                ws.close()
                return waiting, event

    waiting, event = asyncio.run(watch())
    assert event["kernel_id"] == kernel_id and event["grace_seconds"] == 30 and event["idle_seconds"] >= 2
    assert "shut down in 30 s unless it runs something" in event["reason"]
    bob.cancel(waiting.request_id)
    assert kernel_id in kernels(server)  # within its grace


def test_on_a_shared_host_the_services_config_sets_the_idle_policy_for_every_server(service):
    from jupyter_tt.scheduler.client import ServiceClient

    svc = service(config="c.TTSettings.idle_timeout = 900\nc.TTSettings.idle_grace = 120\n")
    assert ServiceClient(str(svc.socket)).idle_policy == (900.0, 120.0)
    assert ServiceClient(str(service().socket)).idle_policy == (0.0, 60.0)  # off unless the admin sets it


def test_a_kernel_whose_model_server_answers_requests_is_not_idle_and_keeps_its_card(servers, state_dir):
    """The kernel itself is quiet after serve(): its model server's work (a child's CPU time) is its activity."""
    import threading

    import httpx

    server = servers(inventory="simulated:n150x1", args=IDLE)
    kernel_id = server.start_kernel("tt-n150")
    client = kernel_client(kernel_id)
    try:
        outputs: list[dict] = []
        reply = client.execute_interactive(
            "import jupyter_tt; llm = jupyter_tt.serve(); print(llm.base_url, llm.api_key)", timeout=240,
            output_hook=lambda msg: outputs.append(msg) if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply
        base_url, key = "".join(m["content"]["text"] for m in outputs).split()
        lease_id = server.lease_of(kernel_id)["id"]
        stop = threading.Event()

        def ask_all_the_time():
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
                while not stop.is_set():
                    http.post("/completions", json={"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                                                    "max_tokens": 16})

        asker = threading.Thread(target=ask_all_the_time, daemon=True)
        asker.start()
        bob = Scheduler(SimulatedInventory("n150x1"), state_dir, user="bob")
        waiting = bob.submit(1, "n150")
        time.sleep(8)  # idle_timeout 2 s and grace 1 s, many times over
        assert isinstance(bob.check(waiting.request_id), Waiting)  # still the kernel's: its model works
        assert server.lease_of(kernel_id)["id"] == lease_id and "is idle for" not in server.log_text()
        stop.set()
        asker.join(60)
        granted = wait_until(lambda: isinstance(lease := bob.check(waiting.request_id), Lease) and lease, timeout=60,
                             message="the card to go to bob once the model server is quiet too")
        bob.release(granted.id)
    finally:
        client.stop_channels()
