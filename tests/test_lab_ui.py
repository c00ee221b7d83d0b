"""The JupyterLab extension in a real browser: Debian's Chromium, driven by Playwright, against a
JupyterLab server started here on a simulated host (one n150 card).

A notebook's kernel leases the card; a second notebook's kernel waits for it (notification, queue,
status bar); shutting the first kernel down hands the card to the second; shutting that one down
frees it. Screenshots of each step go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.support.jupyter_servers import wait_until

pytestmark = [pytest.mark.usefixtures("kernelspecs"), pytest.mark.slow]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
# As root, in a sandbox with no outside network: no sandboxing, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
N150_KERNEL = "Python 3 (1× n150, 1 chip)"  # the launcher card of the tt-n150 kernelspec


@pytest.fixture(scope="module", autouse=True)
def artifacts():
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)


@pytest.fixture
def page(request):
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the UI test needs Chromium at {CHROMIUM}: `apt-get install chromium` (Debian), "
            f"or set CHROMIUM=/path/to/chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)  # a fresh profile
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            shot(page, f"end-{request.node.name}")  # where the test ended: the failure, if it failed
            browser.close()


def lab(servers, tmp_path, inventory: str, args=(), env=None):
    """A JupyterLab server whose user settings say no to Jupyter's news prompt (it would cover the panel)."""
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    return servers(inventory=inventory, args=args, env={"JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"), **(env or {})})


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # notifications slide in
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def new_notebook(page, kernel: str) -> None:
    """File > New Launcher, then the kernel's notebook card: a user's way to start such a kernel."""
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("^New Launcher")).click()
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{kernel}"]').locator("visible=true").click()


def shut_down_kernel(page) -> None:
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("^Shut Down Kernel")).click()
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count():  # some versions ask first
        accept.click()


def device(page, device_id: int):
    return page.locator(f'.jp-tt-device[data-device-id="{device_id}"]')


def test_the_panel_follows_a_kernels_lease_from_queue_to_grant_to_release(servers, page, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # kernels start in seconds on a busy 2-core machine
    # jupyter-resource-usage with CPU tracking on, as `make demo` and Binder run it
    server = lab(servers, tmp_path, "simulated:n150x1", args=["--ResourceUseDisplay.track_cpu_percent=True"])
    page.goto(f"{server.url}/lab?token={server.token}")
    page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
    panel = page.locator("#jupyter-tt-panel")
    expect(panel.locator(".jp-tt-simulated")).to_have_text("SIMULATED")
    expect(device(page, 0)).to_have_attribute("data-state", "free")
    expect(device(page, 0)).to_contain_text("n150 #0")
    expect(panel.locator(".jp-tt-telemetry").first).to_contain_text("°C")
    status = page.locator(".jp-tt-status")
    expect(status).to_have_text("TT 1/1 free (simulated)")
    usage = panel.locator(".jp-tt-usage")
    expect(usage).to_have_text(re.compile(r"^You \(.+\): 0 device-hours today · 0 this week$"))
    shot(page, "1-panel-all-free")

    # A notebook whose kernel asks for the n150: the card becomes leased to it.
    new_notebook(page, N150_KERNEL)
    expect(device(page, 0)).to_have_attribute("data-state", "leased")
    expect(device(page, 0).locator(".jp-tt-holder")).to_contain_text("Untitled.ipynb")
    expect(status).to_have_text(re.compile(r"TT 0/1 free \(simulated\) · this notebook: n150 #0"))
    # jupyter-resource-usage keeps showing memory and CPU beside ours.
    expect(page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"Mem:"))).to_be_visible()
    expect(page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"CPU:"))).to_be_visible()
    # The lease counts in the user's device-hours at once (a few seconds: under 0.01).
    expect(usage).to_have_text(re.compile(r"^You \(.+\): < 0\.01 device-hours today · < 0\.01 this week$"))
    shot(page, "2-leased-to-untitled")

    # A second notebook asks for the same card: its kernel waits, first in the queue.
    new_notebook(page, N150_KERNEL)
    queued = panel.locator(".jp-tt-request")
    expect(queued).to_have_count(1)
    expect(queued).to_contain_text("#1: 1 n150")
    expect(queued).to_contain_text("Untitled1.ipynb")
    expect(page.locator(".jp-Notification-Toast-warning", has_text="Untitled1.ipynb: the kernel waits for 1 n150")).to_be_visible()
    expect(status).to_contain_text("this notebook waits: #1 in the queue")
    shot(page, "3-second-notebook-waits")

    # The first kernel shuts down: the card goes to the waiting kernel, and its user is told.
    page.get_by_role("tab", name="Untitled.ipynb").click()
    shut_down_kernel(page)
    expect(device(page, 0).locator(".jp-tt-holder")).to_contain_text("Untitled1.ipynb")
    expect(queued).to_have_count(0)
    # The waiting notification turned into "got its devices" (its toast closes after 5 s: the
    # notification centre keeps it).
    page.locator(".jp-Notification-Status").click()
    centre = page.get_by_role("list")
    expect(centre.get_by_text("Untitled1.ipynb: the kernel got its devices (n150 #0)")).to_be_visible()
    expect(centre.get_by_text("Untitled1.ipynb: the kernel waits")).to_have_count(0)
    shot(page, "4-granted-to-the-waiting-kernel")
    page.locator(".jp-Notification-Status").click()

    # The second kernel shuts down too: the card is free again.
    page.get_by_role("tab", name="Untitled1.ipynb").click()
    shut_down_kernel(page)
    expect(device(page, 0)).to_have_attribute("data-state", "free")
    expect(status).to_have_text("TT 1/1 free (simulated)")
    shot(page, "5-free-again")
    assert server.leases() == []


GENERIC_KERNEL = "Tenstorrent (choose devices in the notebook)"


def test_a_user_picks_two_n300_for_a_running_notebook_and_its_kernel_restarts_on_them(servers, page, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    server = lab(servers, tmp_path, "simulated:n150x1,n300x2")
    page.goto(f"{server.url}/lab?token={server.token}")
    page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
    status = page.locator(".jp-tt-status")
    new_notebook(page, GENERIC_KERNEL)
    expect(status).to_have_text("TT 3/3 free (simulated)")  # the generic kernel starts on no device

    wait_until(lambda: server.json("/api/sessions"), timeout=30, message="the notebook's kernel to start")
    page.locator(".jp-Toolbar-item[data-jp-item-name='jupyter-tt-devices'] button").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Tenstorrent devices for Untitled.ipynb")
    kinds = dialog.locator("select.jp-tt-choose-type option")
    expect(kinds).to_have_text(["any card type", "n150 (1 on this host)", "n300 (2 on this host)"])
    dialog.locator("select.jp-tt-choose-type").select_option("n300")
    dialog.locator("input.jp-tt-choose-count").fill("2")
    shot(page, "6-choose-two-n300")
    dialog.get_by_role("button", name="Restart on these devices").click()

    expect(status).to_have_text(re.compile(r"TT 1/3 free \(simulated\) · this notebook: n300 #1, n300 #2"))
    for card in (1, 2):
        expect(device(page, card)).to_have_attribute("data-state", "leased")
        expect(device(page, card).locator(".jp-tt-holder")).to_contain_text("Untitled.ipynb")
    shot(page, "7-restarted-on-two-n300")
    [lease] = server.leases()
    assert lease["devices"] == [1, 2] and lease["card_types"] == ["n300"]


def test_a_killed_kernels_card_shows_resetting_under_its_notebook_then_its_lease_again(servers, page, tmp_path, card_host,
                                                                                       monkeypatch):
    """STAND-IN: the sysfs fixture's two n300 cards and a fake tt-smi whose reset takes 8 s."""
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    monkeypatch.setenv("FAKE_TT_SMI_DELAY", "8")  # the resetting state lasts this long: time for a loaded machine to show it
    with card_host.beating(0.2):
        server = lab(servers, tmp_path, "sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)},
                     args=["--TTSettings.reset_after_crash=True", "--TTSettings.reset_tool=tt-smi"])
        page.goto(f"{server.url}/lab?token={server.token}")
        page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
        new_notebook(page, "Python 3 (1× n300, 2 chips)")
        [lease] = wait_until(server.leases, timeout=60, message="the notebook's kernel to get a card")
        card = device(page, lease["devices"][0])
        expect(card).to_have_attribute("data-state", "leased")
        # Started (JupyterLab has its kernel info): the restarter watches it from then on.
        wait_until(lambda: server.kernel_state(lease["kernel_id"]) == "idle", timeout=60,
                   message="the notebook's kernel to be ready")
        [lease] = server.leases()  # its pid now the kernel's (until the kernel is attached, the server's)

        os.kill(lease["pid"], signal.SIGKILL)  # as the OOM killer would
        expect(card).to_have_attribute("data-state", "resetting")
        expect(card.locator(".jp-tt-holder")).to_contain_text("Untitled.ipynb")  # still this notebook's
        expect(card.locator(".jp-tt-problem")).to_contain_text(f"reset after kernel process {lease['pid']} was killed by SIGKILL")
        expect(page.locator(".jp-tt-status")).to_have_text(re.compile(r"this notebook: n300 #\d \(resetting\)$"))
        shot(page, "8-resetting-after-a-crash")
        expect(card).to_have_attribute("data-state", "leased")  # reset, and the kernel restarted on it
        assert [held["id"] for held in server.leases()] == [lease["id"]]


def test_without_the_event_stream_the_panel_still_follows_the_host_by_polling(servers, page, state_dir, tmp_path):
    """Events cut off (a proxy that drops websockets): leases made elsewhere on the host still show."""
    from playwright.sync_api import expect

    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.scheduler import Scheduler

    expect.set_options(timeout=30_000)
    ours = tmp_path / "lab-settings" / "jupyter-tt"
    ours.mkdir(parents=True)
    (ours / "plugin.jupyterlab-settings").write_text('{"pollInterval": 2000}')  # the panel's refresh interval
    server = lab(servers, tmp_path, "simulated:n300x2")
    setting = server.http.get("/lab/api/settings/jupyter-tt:plugin").json()
    assert setting["schema"]["properties"]["pollInterval"]["default"] == 5000  # our schema, installed with the package
    assert json.loads(setting["raw"])["pollInterval"] == 2000
    cut = []
    page.route_web_socket(re.compile(r".*/api/events/subscribe.*"), lambda ws: (cut.append(ws.url), ws.close()))
    page.goto(f"{server.url}/lab?token={server.token}")
    page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
    expect(device(page, 1)).to_have_attribute("data-state", "free")
    assert cut, "the event stream was not cut: this test would not show the polling"
    # Another user's process on the host (no Jupyter server of theirs, so no event here either).
    zoe = Scheduler(SimulatedInventory("n300x2"), state_dir, user="zoe", server="elsewhere")
    held = zoe.acquire(1)
    leased = device(page, held.device_ids[0])
    expect(leased).to_have_attribute("data-state", "leased")
    expect(leased.locator(".jp-tt-user")).to_have_text("zoe")
    shot(page, "6-polling-shows-another-users-lease")
    zoe.release(held.id)
    expect(leased).to_have_attribute("data-state", "free")


def test_a_page_reloaded_while_its_notebook_waits_keeps_one_place_in_the_queue_and_its_own_kernel_gets_the_card(
        servers, page, state_dir, tmp_path):
    """JupyterLab lists a session only once its kernel has started: each reload asks for a kernel again."""
    from playwright.sync_api import expect

    from jupyter_tt.devices import SimulatedInventory
    from jupyter_tt.scheduler import Scheduler

    expect.set_options(timeout=30_000)
    server = lab(servers, tmp_path, "simulated:n150x1")
    notebook = {"cells": [], "metadata": {"kernelspec": {"name": "tt-n150", "display_name": N150_KERNEL,
                                                          "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    (server.workdir / "wait.ipynb").write_text(json.dumps(notebook))
    zoe = Scheduler(SimulatedInventory("n150x1"), state_dir, user="zoe", server="elsewhere")
    held = zoe.acquire(1)
    page.goto(f"{server.url}/lab/tree/wait.ipynb?token={server.token}")
    page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
    queued = page.locator("#jupyter-tt-panel .jp-tt-request")
    expect(queued).to_have_count(1)
    status = page.locator(".jp-tt-status")
    for _ in range(2):
        before = {r["kernel_id"] for r in server.json("/jupyter-tt/api/queue")["requests"]}
        page.reload()
        # The reloaded page's kernel took the older one's place: still one request, and not the same kernel.
        def replaced(before=before):
            now = server.json("/jupyter-tt/api/queue")["requests"]
            return len(now) == 1 and now[0]["kernel_id"] not in before

        wait_until(replaced, timeout=60, message="the reloaded page's kernel to queue")
        expect(queued).to_have_count(1)
        expect(queued).to_contain_text("wait.ipynb")
        expect(status).to_contain_text("this notebook waits: #1 in the queue")
    shot(page, "9-reloaded-while-waiting")
    [request] = server.json("/jupyter-tt/api/queue")["requests"]

    zoe.release(held.id)
    expect(device(page, 0).locator(".jp-tt-holder")).to_contain_text("wait.ipynb")
    expect(status).to_contain_text("this notebook: n150 #0")
    [lease] = server.leases()
    assert lease["kernel_id"] == request["kernel_id"]
    # The page's own session is that kernel's, and no other kernel of the notebook is left.
    sessions = wait_until(lambda: server.json("/api/sessions"), timeout=60, message="the page's session")
    assert [s["kernel"]["id"] for s in sessions] == [lease["kernel_id"]]
    assert [k["id"] for k in server.json("/api/kernels")] == [lease["kernel_id"]]


def test_a_notebook_serves_the_model_chats_with_it_and_benchmarks_it_in_its_widgets(servers, page, tmp_path):
    """The chat and benchmark widgets as a user sees them (screenshots for docs/user/): the embedded model on
    this CPU, the notebook's lease SIMULATED."""
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # a model to load, a benchmark to run, on 2 busy cores
    server = lab(servers, tmp_path, "simulated:n150x1")
    cells = [
        "import jupyter_tt\nllm = jupyter_tt.serve()\nprint('serving on', llm.backend)",
        "llm.chat()",
        "bench = jupyter_tt.BenchmarkWidget(scenario='chat', scale=1 / 16, num_prompts=4)\nbench",
        "bench.run().join()\nprint('benchmark done:', len(bench.rows), 'rows')",
    ]
    notebook = {"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [], "execution_count": None}
                          for c in cells],
                "metadata": {"kernelspec": {"name": "tt-n150", "display_name": N150_KERNEL, "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (server.workdir / "serve.ipynb").write_text(json.dumps(notebook))
    page.goto(f"{server.url}/lab/tree/serve.ipynb?token={server.token}")
    expect(page.locator(".jp-tt-status")).to_contain_text("this notebook: n150 #0")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("^Run All Cells")).click()
    expect(page.locator(".jp-OutputArea-output", has_text="serving on torch")).to_be_visible()

    chat = page.locator(".jp-OutputArea-output textarea")
    expect(chat).to_be_visible()
    chat.fill("What is the capital of France?")
    page.locator(".jp-OutputArea-output button", has_text="Send").click()
    output = chat.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')]")
    expect(output).to_contain_text("Model:")
    expect(output).to_contain_text(re.compile(r"TTFT \d+ ms · TPOT"))
    output.scroll_into_view_if_needed()
    output.screenshot(path=str(ARTIFACTS / "10-chat.png"))

    page.set_viewport_size({"width": 1400, "height": 2000})  # the whole widget in one screenshot
    expect(page.locator(".jp-OutputArea-output", has_text="benchmark done: 3 rows")).to_be_visible()
    widget = page.locator(".jp-OutputArea-output", has_text="largest concurrency meeting the SLO")
    expect(widget).to_contain_text("interactive chat: concurrency 1, 2, 4; ISL 64, OSL 16")
    expect(widget).to_contain_text("SIMULATED: no card ran this")
    # Beside it, what is published for the device the lease stands for (an n150), with its conditions.
    expect(widget).to_contain_text("n150: TTFT 51 ms, 21 tok/s per user, at concurrency 1 and ISL/OSL 128/128")
    expect(widget.locator("svg")).to_contain_text("median TTFT and TPOT by concurrency")
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / "11-benchmark.png"))


def test_a_card_given_to_a_container_beside_us_shows_the_containers_name_in_the_panel(servers, page, tmp_path, card_host,
                                                                                     docker):
    """STAND-IN: the sysfs fixture's two n300 cards, and a fake docker whose tt-inference-server container has card 1."""
    from playwright.sync_api import expect

    from tests.support.fake_docker import record

    expect.set_options(timeout=30_000)
    docker.run([record("tt-inference-server-8b", devices=["/dev/tenstorrent/1"])])
    with card_host.beating(0.2):
        server = lab(servers, tmp_path, "sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(card_host.root)})
        page.goto(f"{server.url}/lab?token={server.token}")
        page.locator('.jp-SideBar [data-id="jupyter-tt-panel"]').click()
        expect(device(page, 1).locator(".jp-tt-container")).to_have_text("given to container tt-inference-server-8b")
        expect(device(page, 0).locator(".jp-tt-container")).to_have_count(0)
        shot(page, "12-a-containers-card")
        new_notebook(page, "Python 3 (1× n300, 2 chips)")
        [lease] = wait_until(server.leases, timeout=60, message="the notebook's kernel to get a card")
        assert lease["devices"] == [0]  # not the container's
