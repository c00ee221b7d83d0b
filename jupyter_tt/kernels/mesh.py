"""How a lease's chips open as one ttnn mesh: the shape, the fabric and the call order Tenstorrent's
own openers use, in the one place every runner of jupyter-tt opens a mesh from.

What the vendor does (read 2026-12; the files are named in docs/admin/validated.md):

- the shape: tt_transformers (``models/tt_transformers/conftest.py``, ``demo/simple_text_demo.py``)
  and vllm-tt-plugin (``utils/dp_discovery.py`` ``_MESH_GRID_PRESETS``) open an N150 as (1, 1), an N300
  as (1, 2), four N150 as (1, 4) and a T3K (a LoudBox) as (1, 8). Their collectives depend on it:
  tt_transformers' ``tt/ccl.py`` takes the Galaxy path for a mesh with no 1 in its shape, so a
  LoudBox opened (2, 4) would run Galaxy collectives. jupyter-tt's own ttnn backend opens the same
  (1, N) and reduces along its one axis with 1-D fabric.
- the fabric: a mesh of more than one chip needs ``ttnn.set_fabric_config(FabricConfig.FABRIC_1D,
  FabricReliabilityMode.STRICT_INIT)`` before ``ttnn.open_mesh_device`` (its collectives, such as
  ``all_reduce``, are fabric ops), and ``FabricConfig.DISABLED`` after ``close_mesh_device``
  (tt-metal's top-level ``conftest.py`` ``set_fabric``/``reset_fabric``; vllm-tt-plugin
  ``worker.py`` ``set_fabric``/``reset_fabric``). One chip: no fabric.
- vLLM on cards opens its mesh itself (vllm-tt-plugin's worker), from ``MESH_DEVICE`` and the
  number of ``TT_VISIBLE_DEVICES`` entries: ``serving/engines.py`` gives it both so that it opens
  the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Runner(str, Enum):
    """What opens a lease's mesh."""

    NOTEBOOK = "open_mesh_device()"  # jupyter_tt.open_mesh_device() in a kernel
    JUPYTER_TT = "jupyter-tt"  # the builtin engine's ttnn backend (--ttnn-impl jupyter-tt)
    TT_TRANSFORMERS = "tt-transformers"  # the builtin engine on tt-metal's Llama (--ttnn-impl tt-transformers)
    VLLM = "vllm"  # engine="vllm", backend="ttnn": vllm-tt-plugin opens it


#: MESH_DEVICE names of the Wormhole products, by (card type, cards): tt-inference-server's
#: ``DeviceTypes.to_mesh_device_str`` and vllm-tt-plugin's ``_MESH_GRID_PRESETS``.
MESH_DEVICE_NAMES = {("n150", 1): "N150", ("n300", 1): "N300", ("n150", 4): "N150x4", ("n300", 4): "T3K"}
#: The fabric a multi-chip Wormhole mesh that is not a Galaxy gets (a Galaxy's is FABRIC_1D_RING).
FABRIC_1D = "FABRIC_1D"


@dataclass(frozen=True)
class MeshPlan:
    """How one runner opens a lease's chips."""

    runner: Runner
    shape: tuple[int, int]
    #: the ``ttnn.FabricConfig`` member set before opening, or None (one chip: no fabric)
    fabric: str | None
    #: ``MESH_DEVICE`` as tt_transformers and vLLM read it: a product name, or "(1, N)"
    mesh_device: str
    #: who calls ``open_mesh_device``: jupyter-tt, or vllm-tt-plugin inside vLLM
    opened_by: str

    @property
    def chips(self) -> int:
        return self.shape[0] * self.shape[1]

    def to_json(self) -> dict:
        return {"runner": self.runner.value, "shape": list(self.shape), "fabric": self.fabric,
                "mesh_device": self.mesh_device, "opened_by": self.opened_by}


def mesh_shape(card_type: str, chips: int) -> tuple[int, int]:
    """The mesh for a lease's chips: one row of all of them (n150 1×1, n300 1×2, a LoudBox 1×8), as
    tt_transformers and vllm-tt-plugin open Wormhole products; a Galaxy's 32 chips 8×4 (their "TG")."""
    if chips == 32 and card_type not in ("n150", "n300"):
        return (8, 4)
    return (1, max(chips, 1))


def mesh_device_name(card_type: str, cards: int, chips: int) -> str:
    """``MESH_DEVICE`` for a lease: the product name where it is one, else the literal shape, which
    tt_transformers' conftest and vllm-tt-plugin's ``parse_mesh_grid`` both read as a tuple."""
    return MESH_DEVICE_NAMES.get((card_type, cards)) or str(mesh_shape(card_type, chips))


def fabric_for(shape: tuple[int, int]) -> str | None:
    """The fabric a mesh needs before it opens: none for one chip, else 1-D (the vendor's default off a Galaxy)."""
    return None if shape[0] * shape[1] == 1 else FABRIC_1D


def mesh_plans(card_type: str, cards: int, chips: int) -> dict[Runner, MeshPlan]:
    """How each runner opens a lease of ``cards`` cards of ``card_type`` with ``chips`` chips."""
    shape = mesh_shape(card_type, chips)
    name = mesh_device_name(card_type, cards, chips)
    return {r: MeshPlan(runner=r, shape=shape, fabric=fabric_for(shape), mesh_device=name,
                        opened_by="vllm-tt-plugin" if r is Runner.VLLM else "jupyter-tt") for r in Runner}


def open_mesh(ttnn, plan: MeshPlan, **options):
    """``ttnn.open_mesh_device`` for ``plan``, with its fabric set first; a failed open leaves the fabric
    disabled again. ``options`` go to ``open_mesh_device`` (trace_region_size, num_command_queues...)."""
    if plan.fabric:
        ttnn.set_fabric_config(getattr(ttnn.FabricConfig, plan.fabric), ttnn.FabricReliabilityMode.STRICT_INIT)
    try:
        return ttnn.open_mesh_device(ttnn.MeshShape(*plan.shape), **options)
    except BaseException:
        if plan.fabric:
            ttnn.set_fabric_config(ttnn.FabricConfig.DISABLED)
        raise


def close_mesh(ttnn, mesh, plan: MeshPlan) -> None:
    """Close a mesh from ``open_mesh`` (its submeshes first, as tt-metal's conftest does), then disable the fabric."""
    try:
        for submesh in mesh.get_submeshes():
            ttnn.close_mesh_device(submesh)
        ttnn.close_mesh_device(mesh)
    finally:
        if plan.fabric:
            ttnn.set_fabric_config(ttnn.FabricConfig.DISABLED)
