"""Kernels that wait in the queue: a server's stop ends their waits (and always ends), and a notebook waits once.

Real Jupyter servers and kernels on a simulated host (STAND-IN for the cards: ``simulated:n150x1``).
"""

from __future__ import annotations

import signal
import subprocess
import threading

import httpx
import pytest

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Scheduler
from tests.support.hang_stacks import dump_stacks
from tests.support.jupyter_servers import wait_until


def open_notebook(server, path: str, kernel: str = "tt-n150", timeout: float = 120) -> dict:
    """POST /api/sessions as JupyterLab does when a notebook opens (in a thread: it returns once the kernel starts)."""
    outcome: dict = {}

    def post():
        try:
            with httpx.Client(base_url=server.url, headers=server.http.headers, timeout=timeout) as client:
                response = client.post("/api/sessions", json={"path": path, "name": path, "type": "notebook",
                                                              "kernel": {"name": kernel}})
            outcome.update(status=response.status_code, body=response.json() if response.content else None)
        except (httpx.HTTPError, ValueError) as e:
            outcome.update(status=None, body=repr(e))

    outcome["thread"] = threading.Thread(target=post, daemon=True)
    outcome["thread"].start()
    return outcome


def queued(server) -> list[dict]:
    return server.json("/jupyter-tt/api/queue")["requests"]


def stopped_within(server, seconds: float) -> int:
    """The server's exit status after SIGTERM; the test fails, with the stacks of the server and its kernels
    and the server's log, if it takes longer."""
    try:
        return server.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {seconds:g} s of SIGTERM:\n{dump_stacks('a stop that hangs')}\n"
                    f"{server.log_text()[-4000:]}")


def one_holds_the_card_one_waits(servers, waiting_kernel: str = "tt-n150") -> tuple:
    """A server on one n150: notebook a's kernel holds it, notebook b's kernel waits for it (or times out)."""
    server = servers(inventory="simulated:n150x1")
    first = open_notebook(server, "a.ipynb")
    first["thread"].join(60)
    assert first["status"] == 201, first
    second = open_notebook(server, "b.ipynb", kernel=waiting_kernel)
    if waiting_kernel == "tt-n150":
        wait_until(lambda: queued(server), timeout=30, message="b's kernel to queue")
    return server, first, second


@pytest.mark.usefixtures("kernelspecs")
def test_a_server_stopped_while_a_kernel_waits_for_a_card_ends_and_gives_the_card_to_nobody(servers, state_dir):
    server, first, second = one_holds_the_card_one_waits(servers)

    server.proc.send_signal(signal.SIGTERM)
    assert stopped_within(server, 30) == 0, server.log_text()[-4000:]
    second["thread"].join(10)
    # b's kernel never started: its request ended with the server's stop, and said why.
    assert second["status"] == 500 and "the Jupyter server is stopping" in str(second["body"]), second
    log = server.log_text()
    assert "Kernel does not exist" not in log, log[-4000:]  # jupyter_server's shutdown_all did not fail
    # The host's state, as anyone else reads it: nothing held, nobody waiting.
    host = Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe")
    assert host.leases() == [] and host.queue() == []
    # a's lease ended with its kernel; b's kernel never held one.
    assert [entry["kernel_id"] for entry in host.history()] == [first["body"]["kernel"]["id"]]


@pytest.mark.usefixtures("kernelspecs")
def test_a_second_sigterm_while_the_server_stops_changes_nothing(servers, state_dir):
    server, _, _ = one_holds_the_card_one_waits(servers)

    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping" in server.log_text(), timeout=10, message="the server to begin its stop")
    server.proc.send_signal(signal.SIGTERM)
    assert stopped_within(server, 30) == 0, server.log_text()[-4000:]
    log = server.log_text()
    assert "ValueError" not in log and "Kernel does not exist" not in log, log[-4000:]
    assert Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe").leases() == []


@pytest.mark.usefixtures("kernelspecs")
def test_a_server_whose_kernel_gave_up_waiting_still_stops_cleanly(servers, state_dir):
    """A kernel that timed out in the queue failed to start: jupyter_client keeps its id as pending."""
    server, _, quick = one_holds_the_card_one_waits(servers, waiting_kernel="tt-n150-quick")
    quick["thread"].join(60)
    assert quick["status"] == 500 and "became free within" in str(quick["body"]), quick

    server.proc.send_signal(signal.SIGTERM)
    assert stopped_within(server, 30) == 0, server.log_text()[-4000:]
    assert "Kernel does not exist" not in server.log_text()
    assert Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe").leases() == []


@pytest.mark.usefixtures("kernelspecs")
def test_a_notebook_opened_again_while_its_kernel_waits_keeps_its_place_and_the_newer_kernel_gets_the_card(
        servers, state_dir):
    """JupyterLab lists a session only once its kernel started: a reloaded page asks for a kernel again."""
    server = servers(inventory="simulated:n150x1")
    zoe = Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe")
    held = zoe.acquire(1)
    older = open_notebook(server, "wait.ipynb")
    wait_until(lambda: queued(server), timeout=30, message="the notebook's kernel to queue")
    yan = Scheduler(SimulatedInventory("n150x1"), state_dir, user="yan")
    behind = yan.submit(1)  # another user asks after the notebook did
    assert behind.position == 2
    newer = open_notebook(server, "wait.ipynb")  # the page reloaded
    older["thread"].join(30)
    assert older["status"] == 500 and "took this one's place in the queue" in str(older["body"]), older
    requests = wait_until(lambda: [r for r in queued(server) if r["kernel_id"] not in (None, _kernel_of(older))
                                   and r["notebook_path"] == "wait.ipynb"], timeout=30, message="the newer kernel to queue")
    [request] = requests
    # One place for the notebook, still ahead of yan, who asked after it did.
    assert [(r["user"], r["position"]) for r in queued(server)] == [("root", 1), ("yan", 2)], queued(server)

    zoe.release(held.id)
    newer["thread"].join(60)
    assert newer["status"] == 201, newer
    [lease] = server.leases()
    assert lease["kernel_id"] == newer["body"]["kernel"]["id"] == request["kernel_id"]
    assert [s["kernel"]["id"] for s in server.json("/api/sessions")] == [lease["kernel_id"]]
    yan.cancel(behind.request_id)


@pytest.mark.usefixtures("kernelspecs")
def test_two_notebooks_waiting_at_once_keep_their_own_places(servers, state_dir):
    server = servers(inventory="simulated:n150x1")
    zoe = Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe")
    held = zoe.acquire(1)
    open_notebook(server, "one.ipynb"), open_notebook(server, "two.ipynb")
    wait_until(lambda: len(queued(server)) == 2, timeout=30, message="both kernels to queue")
    assert sorted(r["notebook_path"] for r in queued(server)) == ["one.ipynb", "two.ipynb"]
    zoe.release(held.id)
    [lease] = wait_until(server.leases, timeout=60, message="one of them to get the card")
    [still] = queued(server)
    assert {lease["notebook_path"], still["notebook_path"]} == {"one.ipynb", "two.ipynb"}


def _kernel_of(outcome: dict) -> str | None:
    body = outcome.get("body")
    return body["kernel"]["id"] if isinstance(body, dict) and "kernel" in body else None
