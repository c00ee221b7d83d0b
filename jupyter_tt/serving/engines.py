"""Which engine serves the model: jupyter-tt's own, or one of the field's, as the model server of the lease.

``builtin`` is jupyter-tt's engine (``jupyter tt serve``: torch, OpenVINO or ttnn backends), the
default and the fallback that always runs. ``llama.cpp`` is llama.cpp's own ``llama-server``, with
continuous batching over parallel slots, on the GGUF file itself. Around either, ``serve()`` gives
the same things: a per-server key, a port on 127.0.0.1, the registration the Jupyter server
proxies by, ``llm.chat()``, the benchmark, and a server that ends with its kernel.

An external engine gets the key in its environment (``LLAMA_API_KEY``), never on its command line,
which every user of the host can read in ``/proc``. It binds its port itself, so before the kernel
sends the key anywhere it checks that the process listening there is the one it started.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import TTError


class EngineName(str, Enum):
    BUILTIN = "builtin"
    LLAMA_CPP = "llama.cpp"


ENGINES = tuple(e.value for e in EngineName)
#: llama-server's parallel slots (a benchmark's c=8 runs at once) and the context each gets.
LLAMA_SLOTS, LLAMA_CONTEXT_PER_SLOT = 8, 2048


@dataclass(frozen=True)
class Launch:
    """How to start an external engine: its command (no secrets in it) and what its environment adds."""

    engine: EngineName
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 300.0


def engine_name(engine: str) -> EngineName:
    try:
        return EngineName(engine)
    except ValueError:
        raise TTError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}") from None


def find_llama_server() -> str:
    """The ``llama-server`` to run: ``JUPYTER_TT_LLAMA_SERVER``, else the one on PATH."""
    configured = os.environ.get("JUPYTER_TT_LLAMA_SERVER")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise TTError(f"JUPYTER_TT_LLAMA_SERVER={configured} is not an executable file: point it at llama.cpp's "
                          "llama-server")
        return configured
    found = shutil.which("llama-server")
    if found is None:
        raise TTError("engine='llama.cpp' needs llama.cpp's llama-server: build it (cmake --build build --target "
                      "llama-server, or python benchmarks/llama_server.py build in jupyter-tt's source tree) and put "
                      "it on PATH or in JUPYTER_TT_LLAMA_SERVER; or use engine='builtin'")
    return found


def cores() -> int:
    """The cores this process may run on (its affinity, as a container or taskset limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def llama_cpp_launch(gguf: str | Path, served_name: str, port: int, api_key: str, *, threads: int | None = None,
                     slots: int = LLAMA_SLOTS, context_per_slot: int = LLAMA_CONTEXT_PER_SLOT) -> Launch:
    """llama-server on ``gguf`` at 127.0.0.1:``port``, keyed, with continuous batching over ``slots``."""
    if not Path(gguf).is_file() or Path(gguf).suffix != ".gguf":
        raise TTError(f"engine='llama.cpp' serves a .gguf file, not {gguf}: pass an embedded model name or a .gguf path")
    threads = threads or cores()
    command = [
        find_llama_server(), "--model", str(gguf), "--alias", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(threads), "--threads-batch", str(threads),
        "--parallel", str(slots), "--ctx-size", str(slots * context_per_slot), "--cont-batching",
    ]
    return Launch(engine=EngineName.LLAMA_CPP, command=command, env={"LLAMA_API_KEY": api_key}, startup_timeout=120.0)
