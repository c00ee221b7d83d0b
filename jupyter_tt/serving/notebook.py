"""``jupyter_tt.serve()`` in a notebook: the model server as a child process of the kernel.

A child process rather than a thread: the engine gets a main thread of its own (torch runs ~2x
slower from other threads on CPUs), the kernel stays responsive, and the server goes away with
the kernel: it watches its parent and exits when the kernel does. It inherits the kernel's
``TT_VISIBLE_DEVICES``, so it runs on the kernel's lease.

On a shared host every user reaches 127.0.0.1, so the server wants a random key (``llm.api_key``,
handed to it in its environment, never on its command line), and it listens on a socket this kernel
bound before it started: no other process can take the port and answer in its place. The
registration the Jupyter server proxies by (port, process identity, key) is 0600 in this user's
runtime dir.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import html
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import httpx
from jupyter_core.paths import jupyter_runtime_dir

from ..errors import TTError
from .backends import DEFAULT_BACKEND, get_backend


def registry_path(port: int, runtime_dir: str | None = None) -> str:
    """Where a kernel records the model it serves, so that the Jupyter server proxies that port only."""
    return os.path.join(runtime_dir or jupyter_runtime_dir(), f"jupyter-tt-serve-{port}.json")


def _listen(port: int | None) -> socket.socket:
    """A socket bound to 127.0.0.1 (``port``, or one the kernel picks) and listening."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port or 0))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TTError(f"port {port} is taken on 127.0.0.1: pick another, or leave port out to get a free one") from None
        raise
    sock.listen(128)
    return sock


def read_registration(port: int, runtime_dir: str | None = None) -> dict | None:
    """What ``serve()`` recorded for ``port`` (pid, start ticks, boot, key, model), or None."""
    try:
        with open(registry_path(port, runtime_dir)) as f:
            entry = json.load(f)
        return entry if isinstance(entry, dict) else None
    except (OSError, ValueError):
        return None


def _register(port: int, entry: dict) -> None:
    path = registry_path(port)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the key: this user's alone
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)
    os.replace(tmp, path)


class LLM:
    """A model served from this kernel: ``.base_url`` for OpenAI clients, ``.close()`` to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, model: str, backend: str, log_path: str, api_key: str):
        self.process, self.port, self.model, self.backend, self.log_path = process, port, model, backend, log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"
        #: The server's key: OpenAI clients send it as their api_key (``Authorization: Bearer``).
        self.api_key = api_key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def proxy_path(self) -> str:
        """The same API through the Jupyter server (with its authentication), below its base URL."""
        return f"jupyter-tt/serve/{self.port}/v1"

    def chat(self, **options):
        """A chat widget on this model, streaming answers with live TTFT and TPOT.

        ``options``: ``system`` (a system prompt), ``temperature``, ``max_tokens``.
        """
        from .chat import ChatWidget

        return ChatWidget(self.base_url, self.served_name, api_key=self.api_key, **options)

    @property
    def served_name(self) -> str:
        """The name clients send as ``model`` (for a file path, the file's stem)."""
        return httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=10).json()["data"][0]["id"]

    def close(self) -> None:
        """Stop the server and free its memory (safe to call twice)."""
        with contextlib.suppress(OSError):
            os.remove(registry_path(self.port))
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in _servers:
            _servers.remove(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LLM {self.model} ({self.backend}) {state} at {self.base_url}>"

    def _repr_html_(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<b>{html.escape(self.model)}</b> ({html.escape(self.backend)}) {state} at "
            f"<code>{html.escape(self.base_url)}</code> · OpenAI-compatible"
        )


_servers: list[LLM] = []


def serve(
    model: str = "smollm2-135m-instruct",
    backend: str = DEFAULT_BACKEND,
    *,
    port: int | None = None,
    weights: str | None = None,
    timeout: float = 300.0,
    ttnn_impl: str | None = None,
) -> LLM:
    """Serve ``model`` from this kernel on 127.0.0.1; returns when it answers (or raises TTError with its log).

    ``backend``, ``weights`` and ``ttnn_impl`` are those of ``jupyter tt serve`` (``backends.BACKENDS``):
    "torch" on the CPU (the reference; int8, bfloat16 or float32), "openvino" on the CPU through
    OpenVINO's compiled graph (faster; int8 or float32), "ttnn" on this kernel's leased Wormhole devices
    ("accuracy" or "performance"; ``ttnn_impl`` "jupyter-tt" or "tt-transformers").
    """
    spec = get_backend(backend)
    weights, ttnn_impl = spec.check(weights, ttnn_impl)
    spec.preflight(ttnn_impl)  # say at once what is missing, rather than after the server fails to start
    sock = _listen(port)
    port = sock.getsockname()[1]
    api_key = secrets.token_urlsafe(32)
    log_path = os.path.join(os.environ.get("JUPYTER_RUNTIME_DIR", "/tmp"), f"jupyter-tt-serve-{port}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cmd = [
        sys.executable, "-m", "jupyter_tt.cli", "serve", "--model", model, "--backend", backend,
        "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid()), "--ttnn-impl", ttnn_impl,
        "--listen-fd", str(sock.fileno()), "--weights", weights,
    ]
    try:
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       pass_fds=[sock.fileno()], env={**os.environ, "JUPYTER_TT_API_KEY": api_key})
    finally:
        sock.close()  # the server holds its own copy
    llm = LLM(process, port, model, backend, log_path, api_key)
    _servers.append(llm)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            _servers.remove(llm)
            tail = open(log_path, errors="replace").read()[-1500:]
            message = next((line for line in reversed(tail.splitlines()) if line.startswith("jupyter tt serve:")), tail)
            raise TTError(f"the model server exited while starting: {message}")
        try:
            # The socket is this server's since before it started: whoever answers with our key is it.
            if httpx.get(f"{llm.base_url}/models", headers=llm.headers, timeout=1).status_code == 200:
                from ..scheduler.processes import ProcessRef

                ref = ProcessRef.of(process.pid)
                _register(port, {"port": port, "pid": ref.pid, "started": ref.started, "boot_id": ref.boot_id,
                                 "api_key": api_key, "model": model, "backend": backend, "kernel_pid": os.getpid()})
                return llm
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            llm.close()
            raise TTError(f"the model server did not answer within {timeout:g} s; its log is {log_path}")
        time.sleep(0.25)


@atexit.register
def _close_all() -> None:
    for llm in list(_servers):
        llm.close()
