"""``jupyter tt check``'s computation on the golden stand-in (ttnn's golden functions on this CPU: NOT a card).

The same ``run_check`` runs on a card with traces (``make test-wormhole`` runs ``jupyter tt check`` there);
here it runs untraced, as the backend does on the stand-in, on meshes opened by the runners' own opener.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from jupyter_tt.check import PCC_MIN, SHAPES, CheckReport, run_check
from jupyter_tt.kernels.mesh import Runner, mesh_plans, open_mesh
from jupyter_tt.serving.backends.ttnn.golden import GoldenTTNN


def golden_mesh(shape):
    ttnn = GoldenTTNN()
    chips = shape[0] * shape[1]
    plan = replace(mesh_plans("n300", 1, chips)[Runner.NOTEBOOK], shape=shape)
    return ttnn, open_mesh(ttnn, plan)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (1, 8)], ids=["n150", "n300", "loudbox"])
def test_the_gated_mlp_agrees_with_torch_at_a_prefill_and_a_decode_shape(shape):
    ttnn, mesh = golden_mesh(shape)
    results = run_check(ttnn, mesh, trace=False)
    assert [(r.shape, r.rows) for r in results] == list(SHAPES)
    assert all(r.pcc >= PCC_MIN and r.passed and r.replays_identical is None for r in results), results
    assert {name for name, _ in ttnn.calls} >= {"from_torch", "linear", "silu", "mul", "to_torch"}
    report = CheckReport(mesh="x".join(map(str, shape)), runs_on="the golden stand-in (NOT a card)",
                         results=tuple(results))
    assert report.ok and report.text().endswith("ready") and "no trace here (golden stand-in)" in report.text()


def test_a_card_that_computes_wrong_fails_the_check():
    """A broken op (here silu computing nothing) is what a card that lost its state would show."""
    ttnn, mesh = golden_mesh((1, 2))

    class Broken:
        def __getattr__(self, name):
            if name == "silu":
                return lambda x, **kw: ttnn.mul(x, 0.0)
            return getattr(ttnn, name)

    results = run_check(Broken(), mesh, trace=False)
    assert not any(r.passed for r in results) and all(r.pcc < PCC_MIN for r in results)
    report = CheckReport(mesh="1x2", runs_on="the golden stand-in (NOT a card)", results=tuple(results))
    assert not report.ok and report.to_json()["ok"] is False and "NOT ready" in report.text()
