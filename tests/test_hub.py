"""A real JupyterHub on a shared host: two system users' servers, one scheduler service, fenced nodes.

The hub (PyPI ``jupyterhub``, its proxy ``configurable-http-proxy`` from npm, installed by make into
.venv/hub) runs as root with ``DummyAuthenticator`` and ``LocalProcessSpawner``, which starts each
single-user server as its system user (tt-alice, tt-bob). Where this checkout sits in a folder only
root may enter (a ``mktemp -d`` clone), the spawner becomes the user with ``setpriv`` inside a private
mount namespace instead of its own setuid (tests/support/os_users.py explains why); everything else is stock.
The host is a STAND-IN: a sysfs fixture tree with one n150 and one n300, fenced by the service.
Everything the users do goes through the hub's public URL, as a browser's requests do.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.jupyter_servers import free_port, stop_process, wait_until
from tests.support.os_users import BIND, PYTHON, open_folder
from tests.support.sysfs_tree import N150, N300, make_host

CHP = Path(sys.prefix) / "hub/node_modules/.bin/configurable-http-proxy"

CONFIG = """
from jupyterhub.spawner import LocalProcessSpawner

USERS = {users!r}


class CheckoutSpawner(LocalProcessSpawner):
    \"\"\"LocalProcessSpawner with each user's environment (their home, this checkout, the scheduler).\"\"\"

    def user_env(self, env):
        env = super().user_env(env)
        env.update(USERS[self.user.name]["env"])
        return env

    def make_preexec_fn(self, name):
        # Where the checkout is reachable only through a bind mount, setpriv in the command becomes the user.
        return None if USERS[name]["become"] else super().make_preexec_fn(name)

    async def start(self):
        self.cmd = [*USERS[self.user.name]["become"], {python!r}, "-m", "jupyterhub.singleuser"]
        self.notebook_dir = USERS[self.user.name]["env"]["HOME"]
        return await super().start()


c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = {proxy!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"tt-alice", "tt-bob"}}
c.JupyterHub.spawner_class = CheckoutSpawner
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.JupyterHub.db_url = "sqlite:///{folder}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{folder}/cookie_secret"
c.JupyterHub.pid_file = "{folder}/hub.pid"
c.JupyterHub.services = [{{"name": "tests", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "tests", "services": ["tests"],
                            "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users"]}}]
"""


class Hub:
    """``jupyterhub`` as root on 127.0.0.1, with its proxy; users' servers through its public URL."""

    def __init__(self, users, service, proxy_args=()):
        if not CHP.exists():
            pytest.skip(f"no configurable-http-proxy at {CHP}: `make env` installs it (npm ci in .venv/hub)")
        self.folder = Path(open_folder("jupyter-tt-hub-"))
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{free_port()}"  # the public URL (the proxy), as users reach it
        hub_port = free_port()  # the hub's own, where services call its API
        settings = {}
        for user in users:
            env = {**user.env(), "JUPYTER_TT_SCHEDULER": service.address, "JUPYTER_DATA_DIR": f"{user.home}/data",
                   "JUPYTER_RUNTIME_DIR": f"{user.home}/runtime", "JUPYTER_CONFIG_DIR": f"{user.home}/config"}
            installed = user.tt("kernelspec", "install", "--user", "--devices", "1", "--card-type", "n300", "--name", "tt-n300",
                                env=user.env(**env))
            assert installed.returncode == 0, installed.stderr
            settings[user.name] = {"env": env, "become": user.command([]) if BIND else []}
        (self.folder / "jupyterhub_config.py").write_text(CONFIG.format(
            users=settings, python=PYTHON, port=self.url.rsplit(":", 1)[1], hub_port=hub_port, api_port=free_port(),
            proxy=[str(CHP), *proxy_args], folder=self.folder, token=self.token))
        self.log_path = self.folder / "hub.log"
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{hub_port}/hub/api", headers={"Authorization": f"token {self.token}"}, timeout=30)
        self.proc = None

    def start(self) -> "Hub":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"], cwd=self.folder,
                                     stdout=self.log, stderr=subprocess.STDOUT)

        def up():
            assert self.proc.poll() is None, self.log_text()
            try:
                return self.api.get("/").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, interval=0.3, message="the hub to answer")
        return self

    def spawn(self, name: str) -> httpx.Client:
        """Start ``name``'s server through the hub API; a client of theirs (their own token) for /user/<name>/."""
        response = self.api.post(f"/users/{name}/server")
        assert response.status_code in (201, 202), response.text

        def ready():
            server = self.api.get(f"/users/{name}").json()["servers"].get("", {})
            return server.get("ready")

        wait_until(ready, timeout=90, interval=0.3, message=f"{name}'s server to be ready")
        token = self.api.post(f"/users/{name}/tokens", json={"scopes": [f"access:servers!user={name}"]}).json()["token"]
        return httpx.Client(base_url=f"{self.url}/user/{name}", headers={"Authorization": f"token {token}"}, timeout=60)

    def stop_server(self, name: str) -> None:
        response = self.api.delete(f"/users/{name}/server")
        assert response.status_code in (202, 204), response.text
        wait_until(lambda: not self.api.get(f"/users/{name}").json()["servers"], timeout=30, interval=0.3,
                   message=f"{name}'s server to stop")

    def stop(self) -> None:
        for name in ("tt-alice", "tt-bob"):
            try:
                self.api.delete(f"/users/{name}/server")
            except httpx.HTTPError:
                pass
        if self.proc:
            stop_process(self.proc, 30)
        self.api.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def hub_host(service, alice, bob):
    """One n150 and one n300 (a fixture tree), fenced by the scheduler service: (tree, service)."""
    tree = make_host(open_folder("jupyter-tt-host-") / "root", [N150(), N300()])
    with tree.beating():
        yield tree, service(inventory="sysfs", env={"JUPYTER_TT_SYSFS_ROOT": str(tree.root)})


@pytest.fixture
def hub(hub_host, alice, bob):
    started = []

    def start(**kw) -> Hub:
        started.append(Hub([alice, bob], hub_host[1], **kw).start())
        return started[-1]

    yield start
    for h in started:
        h.stop()
        print(f"----- hub log -----\n{h.log_text()[-4000:]}")


def open_notebook_in_background(client: httpx.Client, path: str, kernel: str) -> dict:
    """POST /api/sessions in a thread: JupyterLab's request when a notebook opens, open while its kernel waits."""
    outcome: dict = {}

    def post():
        started = time.monotonic()
        try:
            response = client.post("/api/sessions", json={"path": path, "name": path, "type": "notebook",
                                                          "kernel": {"name": kernel}}, timeout=120)
            outcome.update(status=response.status_code, body=response.text)
        except httpx.HTTPError as e:
            outcome.update(status=None, body=repr(e))
        outcome["seconds"] = time.monotonic() - started

    outcome["thread"] = threading.Thread(target=post, daemon=True)
    outcome["thread"].start()
    return outcome


def devices(client: httpx.Client) -> dict:
    response = client.get("/jupyter-tt/api/devices")
    assert response.status_code == 200, response.text
    return response.json()


def node_owner(tree, device_id: int) -> int:
    return (tree.root / "dev/tenstorrent" / str(device_id)).stat().st_uid


def test_behind_a_real_jupyterhub_bob_waits_for_alices_card_sees_why_and_gets_it_when_her_server_stops(hub, hub_host, alice, bob):
    tree, svc = hub_host
    h = hub()
    a, b = h.spawn("tt-alice"), h.spawn("tt-bob")
    try:
        # alice's n300 kernel takes the only n300; her node is hers alone.
        response = a.post("/api/kernels", json={"name": "tt-n300"})
        assert response.status_code == 201, response.text + h.log_text()[-2000:]
        [held] = [d for d in devices(a)["devices"] if d["state"] == "leased"]
        assert held["card_type"] == "n300" and held["user"] == "tt-alice"
        assert node_owner(tree, held["id"]) == alice.uid

        # bob's n300 kernel waits, though the n150 is free; through the hub's URL he sees his place and who holds the card.
        waiting = open_notebook_in_background(b, "wait.ipynb", "tt-n300")
        queue = wait_until(lambda: devices(b)["queue"], timeout=30, message="bob's request in the queue")
        assert [(w["user"], w["position"], w["card_type"]) for w in queue] == [("tt-bob", 1, "n300")]
        seen = next(d for d in devices(b)["devices"] if d["id"] == held["id"])
        assert seen["user"] == "tt-alice" and seen["kernel_id"] is None and seen["notebook"] is None  # who, not what
        time.sleep(5)  # longer than the proxy timeout of the next test: this hub's proxy keeps the request open
        assert "status" not in waiting

        # The hub stops alice's server: her kernel ends, and bob's gets the card (and its node).
        h.stop_server("tt-alice")
        waiting["thread"].join(60)
        assert waiting.get("status") == 201, waiting
        kernel = json.loads(waiting["body"])["kernel"]["id"]
        [lease] = [x for x in b.get("/jupyter-tt/api/leases").json()["leases"] if x["kernel_id"] == kernel]
        assert lease["user"] == "tt-bob" and lease["devices"] == [held["id"]]
        assert node_owner(tree, held["id"]) == bob.uid
        print(f"bob's kernel waited {waiting['seconds']:.1f} s behind the hub's proxy, which sets no timeout of its own")
    finally:
        a.close()
        b.close()


def test_a_wait_longer_than_a_proxys_timeout_loses_nothing_and_the_kernel_is_there_when_granted(hub, hub_host, alice, bob):
    """A proxy in front with a response timeout (here the hub's own, at 2 s; nginx's default is 60 s) cuts
    JupyterLab's open kernel request. The kernel keeps its place in the queue on the server; when
    granted it runs with its lease, and the user's next look (a page reload) finds it."""
    tree, svc = hub_host
    h = hub(proxy_args=["--proxy-timeout", "2000"])
    a, b = h.spawn("tt-alice"), h.spawn("tt-bob")
    try:
        assert a.post("/api/kernels", json={"name": "tt-n300"}).status_code == 201
        waiting = open_notebook_in_background(b, "wait.ipynb", "tt-n300")
        waiting["thread"].join(30)
        assert waiting["status"] is not None and waiting["status"] >= 500, waiting  # the proxy gave up
        assert [w["user"] for w in devices(b)["queue"]] == ["tt-bob"]  # the server did not
        h.stop_server("tt-alice")

        def reloaded():  # what JupyterLab asks when the page is reloaded: the notebook's session, if any
            return [s for s in b.get("/api/sessions").json() if s["path"] == "wait.ipynb"]

        [session] = wait_until(reloaded, timeout=30, message="bob's notebook session once its kernel got the card")
        [lease] = [x for x in b.get("/jupyter-tt/api/leases").json()["leases"] if x.get("kernel_id") == session["kernel"]["id"]]
        assert lease["user"] == "tt-bob" and devices(b)["queue"] == []
        print(f"the proxy answered {waiting['status']} after {waiting['seconds']:.1f} s; the kernel got the card later")
    finally:
        a.close()
        b.close()
