"""A serving process: load a model onto a backend, then serve it (``jupyter tt serve``).

``build_engine`` reads the backend's name and weight format from the one registry
(``backends.BACKENDS``), and ``serve_forever`` puts the OpenAI HTTP layer (``openai``) on a helper
thread and runs the engine on the main one.
"""

from __future__ import annotations

import asyncio

from ..errors import TTError
from .backends import DEFAULT_BACKEND, get_backend
from .engine import Engine
from .openai import MAX_BODY_BYTES, ServingApp


def build_engine(
    model: str = "smollm2-135m-instruct",
    backend: str = DEFAULT_BACKEND,
    *,
    weights: str | None = None,
    max_num_seqs: int = 16,
    kv_cache_mb: int = 256,
    progress: bool = True,
    ttnn_impl: str | None = None,
    step_timeout: float = 120.0,
) -> tuple[Engine, str]:
    """Load ``model`` and make an engine on ``backend`` (not started); returns (engine, served model name).

    ``weights`` and ``ttnn_impl``: one of the backend's weight formats and implementations in
    ``backends.BACKENDS`` (None: its default). The ttnn backend runs on the kernel's lease.
    ``step_timeout``: seconds after which a step counts as stuck (``Engine.health()``).
    """
    from .checkpoint import load_checkpoint

    spec = get_backend(backend)
    weights, implementation = spec.check(weights, ttnn_impl)
    spec.preflight(implementation)  # before minutes of loading: a simulated lease, no lease, no ttnn or openvino
    if spec.name == "ttnn":  # a start on cards takes minutes: its phases, for the checklist (startup.py)
        print(f"jupyter tt serve: loading {model}", flush=True)
    checkpoint = load_checkpoint(model, progress=progress)
    runner = spec.make_runner(checkpoint, weights=weights, kv_cache_bytes=kv_cache_mb * 2**20,
                              max_num_seqs=max_num_seqs, implementation=implementation)
    checkpoint.weights.clear()  # the runner holds its own copy; free the float32 one
    _return_freed_memory()
    engine = Engine(runner, checkpoint.tokenizer, max_num_seqs=max_num_seqs, step_timeout=step_timeout)
    return engine, checkpoint.name


def _return_freed_memory() -> None:
    """Give the heap freed after loading back to the OS (glibc keeps it otherwise), for idle RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def serve_forever(engine: Engine, name: str, host: str = "127.0.0.1", port: int = 8000, backend: str = DEFAULT_BACKEND, *,
                  api_key: str | None = None, listen_fd: int | None = None) -> None:
    """Serve until interrupted (``jupyter tt serve``): HTTP in a helper thread, the engine on this one.

    ``listen_fd``: a socket already bound and listening, inherited from ``serve()``: no other process can
    take the port between its choice and this server's start."""
    import signal
    import socket
    import threading

    from .listener import GuardedHTTPServer, raise_descriptor_limit

    raise_descriptor_limit()
    if backend == "ttnn":  # the start checklist's warm-up phase (startup.py): on a card, the first kernel builds
        print("jupyter tt serve: warming up", flush=True)
    engine.warm_up()  # before /health answers: the first request is then as fast as the next
    app = ServingApp(engine, name, backend, api_key=api_key)
    listening = threading.Event()
    failure: list[BaseException] = []

    def http() -> None:
        async def main():
            try:
                server = GuardedHTTPServer(app.web_app(), max_body_size=64 * MAX_BODY_BYTES)
                if listen_fd is not None:
                    sock = socket.socket(fileno=listen_fd)
                    sock.setblocking(False)
                    server.add_sockets([sock])
                else:
                    server.listen(port, address=host)
            except OSError as e:
                failure.append(e)
                return
            finally:
                listening.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    threading.Thread(target=http, name="jupyter-tt-http", daemon=True).start()
    listening.wait()
    if failure:
        engine.stop()
        raise TTError(f"cannot listen on {host}:{port} ({failure[0]}): pick another --port")
    keyed = "with an API key" if api_key else "without an API key: every local user can use it"
    print(f"Serving {name} ({backend}) on http://{host}:{port}/v1, {keyed}", flush=True)
    # SIGTERM and Ctrl-C (SIGINT) stop the engine's loop, which then aborts what is in flight and returns: no
    # KeyboardInterrupt thrown into the middle of a step.
    interrupted: list[int] = []

    def stop(signum, _frame) -> None:
        interrupted.append(signum)
        engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        engine.run()
    except KeyboardInterrupt:  # before the handlers were in place
        interrupted.append(signal.SIGINT)
    if signal.SIGINT in interrupted:
        print("Stopped (Ctrl-C): requests in flight were aborted", flush=True)
