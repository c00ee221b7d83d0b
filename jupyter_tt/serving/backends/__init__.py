"""The model backends, one folder each, and the one table of their names and weight formats.

``jupyter tt serve``'s ``--backend``/``--weights``/``--ttnn-impl``, ``build_engine`` and
``jupyter_tt.serve()`` all read ``BACKENDS``; nothing else lists them. Importing this module imports
no backend: torch, OpenVINO and ttnn load only when ``Backend.make_runner`` runs.

- ``torch/``: the reference, the model in plain torch (CPU, or CUDA where present);
- ``openvino/``: the fast CPU runner, the same model as one OpenVINO graph with its PagedAttention;
- ``ttnn/``: Wormhole through ttnn (with its golden CPU stand-in), or tt-metal's tt_transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ...errors import TTError


@dataclass(frozen=True, kw_only=True)
class Backend:
    name: str
    summary: str
    #: weight formats, the default first
    weight_formats: tuple[str, ...]
    #: whose model runs it (ttnn: ours or tt-metal's), the default first; one entry where there is no choice
    implementations: tuple[str, ...] = ("jupyter-tt",)

    @property
    def default_weights(self) -> str:
        return self.weight_formats[0]

    def check(self, weights: str | None = None, implementation: str | None = None) -> tuple[str, str]:
        """The weight format and implementation to use (the defaults for None), or a TTError saying what to pass."""
        weights = weights or self.default_weights
        if weights not in self.weight_formats:
            raise TTError(f"weights {weights!r} is not one of the {self.name} backend's formats: use {' or '.join(self.weight_formats)}")
        implementation = implementation or self.implementations[0]
        if implementation not in self.implementations:
            raise TTError(f"{self.name} has no implementation {implementation!r}: use {' or '.join(self.implementations)}")
        return weights, implementation

    def preflight(self, implementation: str | None = None) -> None:
        """Say at once what this machine lacks for the backend (its package's ``check_available``, if any),
        rather than after minutes of loading or a server that fails to start."""
        _, implementation = self.check(None, implementation)
        check = getattr(self._package(), "check_available", None)
        if check:
            check(implementation)

    def _package(self):
        return importlib.import_module(f"{__name__}.{self.name}")

    def make_runner(self, checkpoint, *, weights: str, kv_cache_bytes: int, max_num_seqs: int,
                    implementation: str | None = None):
        """This backend's ``ModelRunner`` for ``checkpoint`` (its package's ``make_runner``)."""
        weights, implementation = self.check(weights, implementation)
        return self._package().make_runner(checkpoint, weights=weights, kv_cache_bytes=kv_cache_bytes,
                                   max_num_seqs=max_num_seqs, implementation=implementation)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(name="torch", summary="the reference: CPU, or CUDA where present",
                weight_formats=("int8", "bfloat16", "float32")),
        Backend(name="openvino", summary="the fast CPU runner (OpenVINO's compiled graph)",
                weight_formats=("int8", "float32")),
        Backend(name="ttnn", summary="the kernel's leased Wormhole devices",
                weight_formats=("accuracy", "performance"), implementations=("jupyter-tt", "tt-transformers")),
    )
}
DEFAULT_BACKEND = "torch"


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or a TTError listing the ones there are."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise TTError(f"unknown backend {name!r}: use {', '.join(BACKENDS)}") from None


def all_weight_formats() -> list[str]:
    """Every backend's weight formats, each once (the CLI's ``--weights`` choices)."""
    return list(dict.fromkeys(w for b in BACKENDS.values() for w in b.weight_formats))
