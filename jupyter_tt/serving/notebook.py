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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx
from jupyter_core.paths import jupyter_runtime_dir

from ..errors import TTError
from ..files import open_private, private_dir
from ..text import printable
from .backends import DEFAULT_BACKEND, get_backend
from .engines import EngineName, engine_name, external_launch
from .startup import Checklist


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
    private_dir(os.path.dirname(path), "Jupyter's runtime folder", setting="JUPYTER_RUNTIME_DIR")
    tmp = f"{path}.{os.getpid()}.tmp"
    with os.fdopen(open_private(tmp), "w") as f:  # it holds the key: this user's alone
        json.dump(entry, f)
    os.replace(tmp, path)


class LLM:
    """A model served from this kernel: ``.base_url`` for OpenAI clients, ``.close()`` to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, model: str, backend: str, log_path: str, api_key: str,
                 own_group: bool = False):
        self.process, self.port, self.model, self.backend, self.log_path = process, port, model, backend, log_path
        #: An external engine leads a process group of its own: stopping it stops all it started.
        self.own_group = own_group
        self.base_url = f"http://127.0.0.1:{port}/v1"
        #: The server's key: OpenAI clients send it as their api_key (``Authorization: Bearer``).
        self.api_key = api_key
        self._cache_hold = None  # the cache entry an engine on cards writes into, held while it runs

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            if self.own_group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

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
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        elif self.own_group:
            with contextlib.suppress(OSError):  # what the engine started and left behind
                os.killpg(self.process.pid, signal.SIGKILL)
        if self in _servers:
            _servers.remove(self)
        if self._cache_hold is not None:
            self._cache_hold.close()
            self._cache_hold = None

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


def newest_server() -> LLM | None:
    """The model server this kernel started last and has not closed, if any (the benchmark's default)."""
    return _servers[-1] if _servers else None


def auto_backend() -> str:
    """``serve()``'s backend when none is given: "ttnn" where this kernel holds an active lease of real
    Wormhole devices, else "torch" (the CPU). Reads the lease only: nothing is imported or opened, and a
    kernel without a lease, or one on the simulated inventory, runs on the CPU."""
    from ..kernels.current import lease

    if not os.environ.get("JUPYTER_TT_LEASE"):
        return DEFAULT_BACKEND
    try:
        held = lease()
    except TTError:  # the lease is unknown here: the CPU, which needs none
        return DEFAULT_BACKEND
    return "ttnn" if held.active and not held.simulated else DEFAULT_BACKEND


def serve(
    model: str = "smollm2-135m-instruct",
    backend: str | None = None,
    *,
    engine: str = "builtin",
    port: int | None = None,
    weights: str | None = None,
    timeout: float | None = None,
    ttnn_impl: str | None = None,
    engine_args: Sequence[str] = (),
) -> LLM:
    """Serve ``model`` from this kernel on 127.0.0.1; returns when it answers (or raises TTError with its log).

    ``backend``: where the model runs. Left out, it is "ttnn" where this kernel holds Wormhole devices
    (a lease on real cards) and "torch" on this CPU elsewhere (``auto_backend``); ``llm.backend`` says
    which. Give it to choose.

    ``timeout``: seconds the start may take, whatever they are (default: ``JUPYTER_TT_SERVE_TIMEOUT``,
    else 300 on a CPU and an hour on cards, where a cold start compiles kernels). A start on cards,
    and any external engine's, shows a checklist of its phases in the cell (``startup.Checklist``);
    a failed one is named with its fix.

    ``engine``: "builtin" (jupyter-tt's own, the default), "llama.cpp" (llama.cpp's ``llama-server`` on
    the GGUF file, from ``JUPYTER_TT_LLAMA_SERVER`` or PATH) or "vllm" (vLLM, run with
    ``JUPYTER_TT_VLLM_PYTHON``: on the CPU, or with ``backend="ttnn"`` on this kernel's Wormhole devices
    through Tenstorrent's vLLM and its TT plugin). ``engine_args`` go to an external engine's command
    line as they are (e.g. ``["--max-model-len", "4096"]``). ``backend``, ``weights`` and ``ttnn_impl``
    are the builtin engine's, those of ``jupyter tt serve`` (``backends.BACKENDS``): "torch" on the CPU
    (the reference; int8, bfloat16 or float32), "openvino" on the CPU through OpenVINO's compiled graph
    (faster; int8 or float32), "ttnn" on this kernel's leased Wormhole devices ("accuracy" or
    "performance"; ``ttnn_impl`` "jupyter-tt" or "tt-transformers").
    """
    name = engine_name(engine)
    if backend is None:  # llama.cpp runs on the CPU only
        backend = DEFAULT_BACKEND if name is EngineName.LLAMA_CPP else auto_backend()
    api_key = secrets.token_urlsafe(32)
    if name is EngineName.BUILTIN:
        if engine_args:
            raise TTError("engine_args are for engine='llama.cpp' or 'vllm'; the builtin engine takes backend=, "
                          "weights= and ttnn_impl=")
        spec = get_backend(backend)
        weights, ttnn_impl = spec.check(weights, ttnn_impl)
        spec.preflight(ttnn_impl)  # say at once what is missing, rather than after the server fails to start
        sock = _listen(port)
        port = sock.getsockname()[1]
        cmd = [
            sys.executable, "-m", "jupyter_tt.cli", "serve", "--model", model, "--backend", backend,
            "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid()), "--ttnn-impl", ttnn_impl,
            "--listen-fd", str(sock.fileno()), "--weights", weights,
        ]
        try:
            process, log_path = _spawn(cmd, port, {"JUPYTER_TT_API_KEY": api_key}, pass_fds=[sock.fileno()])
        finally:
            sock.close()  # the server holds its own copy
        label, owned = backend, True  # the socket was bound here before the server started: whoever answers is it
        bound, hold = (CARD_START_TIMEOUT if backend == "ttnn" else CPU_START_TIMEOUT), None
        checklist = Checklist(f"jupyter-tt ({backend})") if backend == "ttnn" else None
    else:
        if port is None:
            with _listen(None) as probe:
                port = probe.getsockname()[1]
        launch = external_launch(name, model, backend, port, api_key, engine_args)
        bound = start_timeout(timeout, launch.startup_timeout)
        env = launch.env | ({"VLLM_ENGINE_READY_TIMEOUT_S": str(int(bound))} if name is EngineName.VLLM else {})
        hold = hold_cache(launch)
        try:
            process, log_path = _spawn(launch.command, port, env, own_group=True)
        except BaseException:
            if hold is not None:
                hold.close()
            raise
        label, owned = name.value, False
        if launch.env.get("MESH_DEVICE"):
            label += f" on {launch.env['MESH_DEVICE']}"
        checklist = Checklist(label)
    llm = LLM(process, port, model, label, log_path, api_key, own_group=not owned)
    llm._cache_hold = hold
    _servers.append(llm)
    return _wait_until_ready(llm, start_timeout(timeout, bound), owned, checklist)


#: How long a start may take by default: on a CPU, and on cards (a cold start compiles kernels for
#: minutes; tt serve waits an hour, TT_SERVE_READY_TIMEOUT).
CPU_START_TIMEOUT, CARD_START_TIMEOUT = 300.0, 3600.0


def start_timeout(timeout: float | None, default: float) -> float:
    """``timeout`` as given (shorter or longer than the default alike); else ``JUPYTER_TT_SERVE_TIMEOUT``;
    else the engine's ``default``. TTError for a bound that is not a positive number of seconds."""
    value: object = timeout
    if value is None:
        value = os.environ.get("JUPYTER_TT_SERVE_TIMEOUT") or default
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise TTError(f"a start's timeout is a positive number of seconds, not {value!r} (timeout= or "
                      f"JUPYTER_TT_SERVE_TIMEOUT)")
    return seconds


def hold_cache(launch):
    """Hold the cache entry an engine writes into (``Launch.cache``) while it runs, or None."""
    if launch.cache is None:
        return None
    from ..caches import Caches
    from ..config import TTSettings

    return Caches.from_settings(TTSettings()).use(*launch.cache)[1]


def _spawn(command: list[str], port: int, env: dict[str, str], *, pass_fds=(), own_group: bool = False):
    """Start a model server, its output in a private log: (the process, the log's path).

    ``own_group``: an external engine, in a process group of its own (stopping it stops all it started),
    sent SIGTERM by the kernel's death (it does not watch its parent as ``jupyter tt serve`` does)."""
    runtime = private_dir(jupyter_runtime_dir(), "Jupyter's runtime folder", setting="JUPYTER_RUNTIME_DIR")
    log_path = str(runtime / f"jupyter-tt-serve-{port}.log")
    with os.fdopen(open_private(log_path), "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   pass_fds=list(pass_fds), env={**os.environ, **env}, start_new_session=own_group,
                                   preexec_fn=_die_with_parent if own_group else None)
    return process, log_path


def _die_with_parent() -> None:  # in the child, before exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` (or one it started) listens on 127.0.0.1:``port``."""
    import psutil

    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="tcp")):
                return True
    except psutil.Error:
        return False
    return False


def _wait_until_ready(llm: LLM, timeout: float, owned: bool, checklist: Checklist | None) -> LLM:
    """Until the server answers with our key (``owned``: the port is known to be its; else an external
    engine, which must be seen listening there first, so that the key goes to no one else). With a
    ``checklist``, its phases are read from the server's log as it writes it and shown in the cell."""
    process, started = llm.process, time.monotonic()
    deadline = started + timeout
    shown = _Shown(checklist)
    with open(llm.log_path, errors="replace") as log:
        while True:
            if checklist is not None:
                for line in log.readlines():
                    checklist.feed(line)
                shown.update()
            if process.poll() is not None:
                _servers.remove(llm)
                llm.close()
                tail = open(llm.log_path, errors="replace").read()[-1500:]
                own = next((line for line in reversed(tail.splitlines()) if line.startswith("jupyter tt serve:")), None)
                failure = checklist.failure(own or printable(tail.strip().splitlines()[-1] if tail.strip() else "no output")) \
                    if checklist is not None else None
                raise TTError(f"the model server exited while starting: {failure or own or tail}; its log is {llm.log_path}")
            try:
                if (owned or _listens(process.pid, llm.port)) and \
                        httpx.get(f"{llm.base_url}/models", headers=llm.headers, timeout=1).status_code == 200:
                    _register_server(llm)
                    if checklist is not None:
                        checklist.answering()
                        shown.update(final=True)
                    return llm
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                llm.close()
                where = f" ({', '.join(p.value for p, st in checklist.phases.items() if st.started and not st.done)})" \
                    if checklist is not None else ""
                raise TTError(f"the model server did not answer within {timeout:g} s{where}; its log is {llm.log_path}. "
                              f"A cold start on cards compiles kernels for minutes: give serve(timeout=...) more, or "
                              f"set JUPYTER_TT_SERVE_TIMEOUT")
            time.sleep(0.25)


def _register_server(llm: LLM) -> None:
    from ..scheduler.processes import ProcessRef

    ref = ProcessRef.of(llm.process.pid)
    _register(llm.port, {"port": llm.port, "pid": ref.pid, "started": ref.started, "boot_id": ref.boot_id,
                         "api_key": llm.api_key, "model": llm.model, "backend": llm.backend, "kernel_pid": os.getpid()})


class _Shown:
    """A checklist in the cell, updated in place (``display_id``); outside IPython, a line per change."""

    def __init__(self, checklist: Checklist | None):
        self.checklist, self.handle, self.at = checklist, None, 0.0
        self.last: list[str] = []
        if checklist is None:
            return
        try:
            from IPython import get_ipython

            self.ipython = get_ipython() is not None
        except ImportError:
            self.ipython = False

    def update(self, final: bool = False) -> None:
        c = self.checklist
        if c is None:
            return
        text = c.text()
        state = [m for m, _, _ in c.rows()]
        if not self.ipython:
            if state != self.last:
                print(text, flush=True)
                self.last = state
            return
        if state == self.last and not final and time.monotonic() - self.at < 1.0:
            return
        from IPython.display import display

        bundle = {"text/plain": text, "text/html": c.html()}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)
        self.last, self.at = state, time.monotonic()




@atexit.register
def _close_all() -> None:
    for llm in list(_servers):
        llm.close()
