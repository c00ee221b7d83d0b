"""Real ``jupyter server`` processes on 127.0.0.1 for tests, driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_in_thread(app):
    """Serve a tornado ``Application`` on 127.0.0.1 from a thread of its own for the block: its base URL.
    For in-process servers (a scripted endpoint, a model server over a test runner)."""
    import asyncio
    import threading

    from tornado.httpserver import HTTPServer

    port, loop, ready = free_port(), asyncio.new_event_loop(), threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        HTTPServer(app).listen(port, "127.0.0.1")
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "the in-thread server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, workdir: Path, env: dict | None = None, args: list[str] = (), name: str = "server", user=None):
        """``user``: an ``os_users.OSUser`` to run the server as (its workdir then goes in their home)."""
        self.user = user
        self.workdir = Path(user.home) / name if user else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if user:
            os.chown(self.workdir, user.uid, user.gid)
        self.env = {**(user.env() if user else os.environ), **(env or {})}
        self.args = list(args)
        self.name = name
        self.token = secrets.token_hex(8)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=60)

    def start(self) -> "Server":
        python = sys.executable
        if self.user:
            from .os_users import PYTHON as python
        cmd = [
            python, "-m", "jupyter_server", "--no-browser", "--allow-root",
            f"--port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.workdir}",
            "--ServerApp.log_level=DEBUG", "--TTSettings.watch_interval=0.3", *self.args,
        ]
        self.log = open(self.log_path, "a")
        if self.user:
            cmd = self.user.command(cmd)
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/api/status", headers=self.http.headers, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, message=f"{self.name} to answer")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ---------------------------------------------------------------- API

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(path, **kw)

    def json(self, path: str):
        response = self.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def kernel_state(self, kernel_id: str) -> str | None:
        """The kernel's ``execution_state``, or None while Jupyter is still starting it.

        A kernel's lease is made while it launches, before ``/api/kernels`` lists it (jupyter_client adds a
        kernel to its table when its start has finished), so a 404 here means "not yet", not "gone".
        """
        response = self.get(f"/api/kernels/{kernel_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()["execution_state"]

    def start_kernel(self, name: str) -> str:
        response = self.http.post("/api/kernels", json={"name": name})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def shutdown_kernel(self, kernel_id: str) -> None:
        assert self.http.delete(f"/api/kernels/{kernel_id}").status_code == 204

    def watched(self, kernel_id: str, client) -> None:
        """Until this server sees the kernel's messages: its IOPub subscription may still be joining
        (ZMQ's slow joiner), and a status it misses leaves the kernel "starting" in its view."""
        def seen():
            client.execute("pass", reply=True, timeout=10)  # the shell reply: no subscription to join
            return self.json(f"/api/kernels/{kernel_id}")["execution_state"] == "idle"

        wait_until(seen, timeout=30, interval=0.5, message="the server to see the kernel's messages")

    def leases(self) -> list[dict]:
        return self.json("/jupyter-tt/api/leases")["leases"]

    def lease_of(self, kernel_id: str) -> dict | None:
        return next((lease for lease in self.leases() if lease["kernel_id"] == kernel_id), None)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.http.close()


def kernel_client(kernel_id: str):
    """A client on a server's kernel, from its connection file (the server runs with this test's runtime dir)."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    return client


def kernel_environ(pid: int) -> dict[str, str]:
    """The environment a kernel process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status == "Z"
