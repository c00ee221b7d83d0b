"""The ttnn backend, on the kernel's leased Wormhole devices.

- ``model.py``: our Llama in ttnn ops (the "jupyter-tt" implementation), after tt_transformers;
- ``golden.py``: the CPU stand-in that runs the same code through ttnn's golden functions;
- ``tt_transformers.py``: tt-metal's own tuned Llama, where its ``models`` package is importable;
- ``paging.py``: what both runners share (decode rows, page tables, the wanted logits).
"""

from __future__ import annotations


def check_available(implementation: str) -> None:
    """A simulated lease, no lease or no ttnn fail here, before the checkpoint is read."""
    from ....kernels.current import check_ttnn_backend

    check_ttnn_backend()
    if implementation == "tt-transformers":
        from .tt_transformers import TTTransformersRunner

        TTTransformersRunner.check_available()


def make_runner(checkpoint, *, weights: str, kv_cache_bytes: int, max_num_seqs: int, implementation: str):
    """The runner on this kernel's leased devices, opened as one mesh."""
    from ....kernels.current import open_mesh_device

    if implementation == "tt-transformers":
        from .tt_transformers import TTTransformersRunner

        TTTransformersRunner.check_available()
        return TTTransformersRunner(checkpoint, open_mesh_device(**TTTransformersRunner.MESH_OPTIONS), max_batch=max_num_seqs)
    from .model import MESH_OPTIONS
    from .runner import TtnnModelRunner

    return TtnnModelRunner(checkpoint, open_mesh_device(**MESH_OPTIONS), weights=weights, kv_cache_bytes=kv_cache_bytes)
