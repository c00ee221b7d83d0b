"""``jupyter tt check`` and ``jupyter_tt.check()``: does this lease's card compute right, now?

The vendor's ``tt-check`` resets every card on the host before its run, which no one may do on a shared
host. This check touches the caller's own lease only and never resets: it opens the lease's mesh as the
runners do (``open_lease_mesh``: one row of chips, fabric where there are several), runs a small gated
MLP (``silu(x·W1) ⊙ (x·W3) · W2``, the feed-forward block of every Llama layer) at a prefill shape and a
decode shape, and compares each with torch in float32: a Pearson correlation (PCC) of at least 0.99
passes, as tt-metal's model tests gate their outputs. On a card each shape is also captured as a trace and
replayed twice: the replays must be identical, bit for bit.

The same code runs on the CPU through ttnn's golden functions (``golden.GoldenTTNN``: ttnn passed in), which
is how CI runs it; the golden stand-in does not trace, so there the replay part is skipped, and says so.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field

#: The least Pearson correlation with torch that passes (tt-metal's model tests gate at 0.99).
PCC_MIN = 0.99
#: (name, rows of activations): a 128-token prefill, and a decode step of a 32-row batch.
SHAPES = (("prefill", 128), ("decode", 32))
#: The MLP's sizes: a small Llama-like block (hidden 256, intermediate 768), seconds on a card or a CPU.
DIM, HIDDEN = 256, 768


@dataclass(frozen=True)
class ShapeResult:
    shape: str
    rows: int
    pcc: float
    #: None where there was no trace to replay (the golden stand-in), else whether two replays agreed bit for bit
    replays_identical: bool | None

    @property
    def passed(self) -> bool:
        return self.pcc >= PCC_MIN and self.replays_identical is not False


@dataclass(frozen=True)
class CheckReport:
    """What ``check()`` found: one result per shape; ``ok`` when every one passed."""

    mesh: str
    runs_on: str
    results: tuple[ShapeResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_json(self) -> dict:
        return {"ok": self.ok, "mesh": self.mesh, "runs_on": self.runs_on, "pcc_min": PCC_MIN,
                "results": [{**asdict(r), "passed": r.passed} for r in self.results]}

    def text(self) -> str:
        lines = [f"check on {self.runs_on}, mesh {self.mesh}: gated MLP {DIM}x{HIDDEN}, PCC >= {PCC_MIN:g} against torch"]
        for r in self.results:
            replay = ("trace replays identical" if r.replays_identical else "TRACE REPLAYS DIFFER"
                      if r.replays_identical is False else "no trace here (golden stand-in)")
            lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.shape:<8} {r.rows:>4} rows  PCC {r.pcc:.5f}  {replay}")
        lines.append("ready" if self.ok else "NOT ready: a result above failed; `jupyter tt devices` shows the card's state")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"


def pcc(a, b) -> float:
    """Pearson correlation of two tensors, as float64 (1.0 for two identical constant tensors)."""
    import torch

    a, b = a.double().flatten(), b.double().flatten()
    if torch.equal(a, b):
        return 1.0
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator else 0.0


def run_check(ttnn, mesh, *, trace: bool, seed: int = 0) -> list[ShapeResult]:
    """The gated MLP at each of ``SHAPES`` on ``mesh`` through ``ttnn`` (the real module, or the golden stand-in),
    each against torch; with ``trace``, captured once and replayed twice."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(shape, generator=generator) / shape[0] ** 0.5
               for name, shape in (("w1", (DIM, HIDDEN)), ("w3", (DIM, HIDDEN)), ("w2", (HIDDEN, DIM)))}
    replicate = ttnn.ReplicateTensorToMesh(mesh)

    def put(t):
        return ttnn.from_torch(t.to(torch.bfloat16), dtype=ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, device=mesh,
                               memory_config=ttnn.DRAM_MEMORY_CONFIG, mesh_mapper=replicate)

    on_device = {name: put(w) for name, w in weights.items()}

    def mlp(x):
        gate = ttnn.silu(ttnn.linear(x, on_device["w1"], dtype=ttnn.bfloat16))
        up = ttnn.linear(x, on_device["w3"], dtype=ttnn.bfloat16)
        return ttnn.linear(ttnn.mul(gate, up), on_device["w2"], dtype=ttnn.bfloat16)

    def host(y, rows):  # the first device's copy (every device computed the same)
        return ttnn.to_torch(y, mesh_composer=ttnn.ConcatMeshToTensor(mesh, dim=0))[:rows].float()

    results = []
    for name, rows in SHAPES:
        x = torch.randn((rows, DIM), generator=generator)
        w = {k: v.to(torch.bfloat16).float() for k, v in weights.items()}  # the weights as the card holds them
        xs = x.to(torch.bfloat16).float()
        expected = (torch.nn.functional.silu(xs @ w["w1"]) * (xs @ w["w3"])) @ w["w2"]
        inputs = put(x)
        replays = None
        if trace:
            mlp(inputs)  # compile outside the trace
            trace_id = ttnn.begin_trace_capture(mesh, cq_id=0)
            out = mlp(inputs)
            ttnn.end_trace_capture(mesh, trace_id, cq_id=0)
            ttnn.execute_trace(mesh, trace_id, cq_id=0, blocking=True)
            first = host(out, rows)
            ttnn.execute_trace(mesh, trace_id, cq_id=0, blocking=True)
            second = host(out, rows)
            ttnn.release_trace(mesh, trace_id)
            got, replays = first, torch.equal(first, second)
        else:
            got = host(mlp(inputs), rows)
        results.append(ShapeResult(name, rows, round(pcc(got, expected), 6), replays))
    return results


def check() -> CheckReport:
    """Run the readiness check on this kernel's (or ``jupyter tt run``'s) lease: see the module's docstring.

    Raises LeaseError on no, an ended or a simulated lease, and TTError without ttnn, before touching a card."""
    from .kernels.current import check_ttnn_backend, close_mesh_device, open_lease_mesh
    from .kernels.mesh import Runner

    held = check_ttnn_backend()
    import ttnn

    plan = held.meshes[Runner.NOTEBOOK]
    mesh = open_lease_mesh(Runner.NOTEBOOK, trace_region_size=16 << 20)
    try:
        results = run_check(ttnn, mesh, trace=True)
    finally:
        close_mesh_device(mesh)
    cards = ", ".join(f"{d.card_type} #{d.id}" for d in held.devices)
    return CheckReport(mesh="x".join(map(str, plan.shape)), runs_on=f"lease {held.id} ({cards})", results=tuple(results))
