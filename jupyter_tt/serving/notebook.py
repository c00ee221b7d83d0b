"""``jupyter_tt.serve()`` in a notebook: the model server as a child process of the kernel.

A child process rather than a thread: the engine gets a main thread of its own (torch runs ~2x
slower from other threads on CPUs), the kernel stays responsive, and the server goes away with
the kernel: it watches its parent and exits when the kernel does. It inherits the kernel's
``TT_VISIBLE_DEVICES``, so it runs on the kernel's lease.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import json
import os
import socket
import subprocess
import sys
import time

import httpx
from jupyter_core.paths import jupyter_runtime_dir

from ..errors import TTError


def registry_path(port: int, runtime_dir: str | None = None) -> str:
    """Where a kernel records the model it serves, so that the Jupyter server proxies that port only."""
    return os.path.join(runtime_dir or jupyter_runtime_dir(), f"jupyter-tt-serve-{port}.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LLM:
    """A model served from this kernel: ``.base_url`` for OpenAI clients, ``.close()`` to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, model: str, backend: str, log_path: str):
        self.process, self.port, self.model, self.backend, self.log_path = process, port, model, backend, log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"

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

        return ChatWidget(self.base_url, self.served_name, **options)

    @property
    def served_name(self) -> str:
        """The name clients send as ``model`` (for a file path, the file's stem)."""
        return httpx.get(f"{self.base_url}/models", timeout=10).json()["data"][0]["id"]

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
    backend: str = "torch",
    *,
    port: int | None = None,
    weights: str | None = None,
    timeout: float = 300.0,
    ttnn_impl: str = "jupyter-tt",
) -> LLM:
    """Serve ``model`` from this kernel on 127.0.0.1; returns when it answers (or raises TTError with its log).

    ``backend="ttnn"`` serves on this kernel's leased Wormhole devices (``weights`` "accuracy" or
    "performance"; ``ttnn_impl`` "jupyter-tt" or "tt-transformers"); ``backend="torch"`` on the CPU.
    """
    if backend == "ttnn":
        from ..kernels.current import check_ttnn_backend

        check_ttnn_backend()  # say at once what is missing, rather than after the server fails to start
    port = port or _free_port()
    log_path = os.path.join(os.environ.get("JUPYTER_RUNTIME_DIR", "/tmp"), f"jupyter-tt-serve-{port}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cmd = [
        sys.executable, "-m", "jupyter_tt.cli", "serve", "--model", model, "--backend", backend,
        "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid()), "--ttnn-impl", ttnn_impl,
    ]
    if weights:
        cmd += ["--weights", weights]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    llm = LLM(process, port, model, backend, log_path)
    _servers.append(llm)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            _servers.remove(llm)
            tail = open(log_path, errors="replace").read()[-1500:]
            message = next((line for line in reversed(tail.splitlines()) if line.startswith("jupyter tt serve:")), tail)
            raise TTError(f"the model server exited while starting: {message}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                path = registry_path(port)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    json.dump({"port": port, "pid": process.pid, "model": model, "backend": backend, "kernel_pid": os.getpid()}, f)
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
