"""The ttnn backend, on the kernel's leased Wormhole devices.

- ``model.py``: our Llama in ttnn ops (the "jupyter-tt" implementation), after tt_transformers;
- ``golden.py``: the CPU stand-in that runs the same code through ttnn's golden functions;
- ``tt_transformers.py``: tt-metal's own tuned Llama, where its ``models`` package is importable;
- ``paging.py``: what both runners share (decode rows, page tables, the wanted logits).
"""

from __future__ import annotations

import os


def check_available(implementation: str) -> None:
    """A simulated lease, no lease or no ttnn fail here, before the checkpoint is read."""
    from ....kernels.current import check_ttnn_backend

    check_ttnn_backend()
    if implementation == "tt-transformers":
        from .tt_transformers import TTTransformersRunner

        TTTransformersRunner.check_available()


def make_runner(checkpoint, *, weights: str, kv_cache_bytes: int, max_num_seqs: int, implementation: str):
    """The runner on this kernel's leased devices, opened as one mesh the way its implementation's
    vendor opens it (``kernels/mesh.py``); converted weights in this user's cache (``caches.py``)."""
    from ....caches import Caches
    from ....config import TTSettings
    from ....kernels.current import check_ttnn_backend, open_lease_mesh
    from ....kernels.mesh import Runner

    caches = Caches.from_settings(TTSettings())
    if implementation == "tt-transformers":
        from ...engines import tt_weights_entry
        from .tt_transformers import TTTransformersRunner, trace_region_size

        TTTransformersRunner.check_available()
        TTTransformersRunner.prepare(checkpoint)
        plan = check_ttnn_backend().meshes[Runner.TT_TRANSFORMERS]
        entry, path = tt_weights_entry(checkpoint.source, plan.mesh_device)
        _, hold = caches.use(*entry)  # held for the life of this model server
        _held.append(hold)
        os.environ["TT_CACHE_PATH"] = path  # tt_transformers adds the device name below it
        mesh = open_lease_mesh(Runner.TT_TRANSFORMERS, trace_region_size=trace_region_size(checkpoint.source, plan.mesh_device))
        return TTTransformersRunner(checkpoint, mesh, max_batch=max_num_seqs)
    from .model import MESH_OPTIONS
    from .runner import TtnnModelRunner

    plan = check_ttnn_backend().meshes[Runner.JUPYTER_TT]
    say(f"opening {plan.chips} chip{'s' * (plan.chips > 1)} (fabric {plan.fabric or 'none'})")
    mesh = open_lease_mesh(Runner.JUPYTER_TT, **MESH_OPTIONS)
    say(f"opened {mesh.get_num_devices()} device{'s' * (mesh.get_num_devices() > 1)} as a "
        f"{plan.shape[0]}x{plan.shape[1]} mesh")
    say("loading weights onto the mesh")
    runner = TtnnModelRunner(checkpoint, mesh, weights=weights, kv_cache_bytes=kv_cache_bytes, caches=caches)
    cache = runner.weight_cache
    if cache is not None:
        say(f"weights loaded from the cache ({cache.loaded} tensors, {cache.entry})" if cache.hit else
            f"weights converted ({cache.converted} tensors, kept for the next start in {cache.entry})")
    say(f"KV cache of {runner.num_blocks} blocks of {runner.block_size} tokens")
    return runner


def say(text: str) -> None:
    """A line of the model server's start, as ``startup.Checklist`` reads it."""
    print(f"jupyter tt serve: {text}", flush=True)


_held: list = []  # the cache entries this process's runners write into
