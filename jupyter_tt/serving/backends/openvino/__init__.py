"""The OpenVINO CPU backend: the reference model's int8 or float32 weights as one compiled OpenVINO
graph, attention by OpenVINO's PagedAttention on the engine's block tables (``runner.py``)."""

from __future__ import annotations

import importlib.util

from ....errors import TTError


def check_available(implementation: str = "jupyter-tt") -> None:
    """A TTError saying how to install OpenVINO, where it is missing (without importing it)."""
    if importlib.util.find_spec("openvino") is None:
        raise TTError("the openvino backend needs the openvino package: pip install 'jupyter-tt[serve]', "
                      "or serve with backend torch")


def make_runner(checkpoint, *, weights: str, kv_cache_bytes: int, max_num_seqs: int, implementation: str):
    from .runner import OpenVINOModelRunner

    return OpenVINOModelRunner(checkpoint, weights=weights, kv_cache_bytes=kv_cache_bytes)
