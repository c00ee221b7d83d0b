"""The ttnn backend on a real Wormhole card (skipped where no /dev/tenstorrent exists).

Run on a host with cards:  make test-wormhole
These have NOT run on a card yet. Set JUPYTER_TT_TEST_MODEL to a Llama checkpoint (a Hugging Face
folder or .gguf) to measure it instead of the embedded SmolLM2-135M-Instruct; the public figures
next to ours are Tenstorrent's for Llama-3.1-8B-Instruct (tt-inference-server's reference at
concurrency 1, 128/128, and tt-metal's model_targets.yaml CI gates; ``published.py``), so compare
like with like. The mesh opens as every runner opens it (``kernels/mesh.py``: one row, 1-D fabric).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from jupyter_tt.caches import Caches
from jupyter_tt.devices.sfpi import installed_ttnn_sfpi
from jupyter_tt.kernels.mesh import MeshPlan, Runner, close_mesh, fabric_for, open_mesh
from jupyter_tt.serving.backends.torch.runner import TorchModelRunner
from jupyter_tt.serving.backends.ttnn.model import MESH_OPTIONS
from jupyter_tt.serving.backends.ttnn.runner import TtnnModelRunner
from jupyter_tt.serving.checkpoint import load_checkpoint
from jupyter_tt.serving.engine import SequenceStep
from published import comparison

pytestmark = [
    pytest.mark.wormhole,
    pytest.mark.skipif(not Path("/dev/tenstorrent").exists(), reason="no /dev/tenstorrent: needs a Wormhole card"),
]

MODEL = os.environ.get("JUPYTER_TT_TEST_MODEL", "smollm2-135m-instruct")


def pcc(a, b) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import ttnn

    sfpi = installed_ttnn_sfpi()
    if sfpi.error:  # else ttnn fails at its first kernel build, deep inside open_mesh_device
        pytest.fail(sfpi.error)
    n = ttnn.GetNumAvailableDevices()
    plan = MeshPlan(Runner.JUPYTER_TT, shape=(1, n), fabric=fabric_for((1, n)), mesh_device=f"(1, {n})",
                    opened_by="jupyter-tt")
    mesh = open_mesh(ttnn, plan, **MESH_OPTIONS)
    checkpoint = load_checkpoint(MODEL, progress=False)
    runner = TtnnModelRunner(checkpoint, mesh, max_seq_len=4096, caches=Caches(tmp_path_factory.mktemp("cache")))
    yield checkpoint, runner, n
    runner.close()
    close_mesh(ttnn, mesh, plan)
    assert ttnn.get_fabric_config() == ttnn.FabricConfig.DISABLED


def test_logits_match_the_torch_backend_on_the_card(setup, report):
    checkpoint, runner, _ = setup
    ref = TorchModelRunner(checkpoint, weights="float32", block_size=runner.block_size)
    ids = checkpoint.tokenizer.encode("The capital of France is")
    table = [3, 1]
    a, b = runner.step([SequenceStep(tokens=ids, start_pos=0, block_table=table)])[0], ref.step([SequenceStep(tokens=ids, start_pos=0, block_table=table)])[0]
    pccs, pos = [pcc(a, b)], len(ids)
    for _ in range(32):
        step = SequenceStep(tokens=[int(b.argmax())], start_pos=pos, block_table=table)
        a, b = runner.step([step])[0], ref.step([step])[0]
        pccs.append(pcc(a, b))
        pos += 1
    report(f"Wormhole ttnn vs torch float32 ({MODEL}): PCC prefill {pccs[0]:.4f}, decode min {min(pccs[1:]):.4f}")
    assert min(pccs) >= 0.99


def test_ttft_decode_and_prefill_speed_next_to_the_public_figures(setup, report):
    checkpoint, runner, n = setup
    prompt = torch.randint(100, 1000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    table = list(range(runner.blocks_per_seq))
    runner.step([SequenceStep(tokens=prompt, start_pos=0, block_table=table)])  # compile
    t = time.perf_counter()
    logits = runner.step([SequenceStep(tokens=prompt, start_pos=0, block_table=table)])
    ttft = time.perf_counter() - t
    pos, token = len(prompt), int(logits[0].argmax())
    for _ in range(3):  # compile and capture the decode trace
        token = int(runner.step([SequenceStep(tokens=[token], start_pos=pos, block_table=table)])[0].argmax())
        pos += 1
    steps, t = 64, time.perf_counter()
    for _ in range(steps):
        token = int(runner.step([SequenceStep(tokens=[token], start_pos=pos, block_table=table)])[0].argmax())
        pos += 1
    tps = steps / (time.perf_counter() - t)
    long = torch.randint(100, 1000, (2048,), generator=torch.Generator().manual_seed(1)).tolist()
    runner.step([SequenceStep(tokens=long, start_pos=0, block_table=table)])
    t = time.perf_counter()
    runner.step([SequenceStep(tokens=long, start_pos=0, block_table=table)])
    prefill = len(long) / (time.perf_counter() - t)
    for line in comparison(MODEL, n, ttft_s=ttft, decode_tok_s=tps, prefill_tok_s=prefill):
        report(line)
    assert tps > 0 and ttft > 0


@pytest.mark.skipif(MODEL != "smollm2-135m-instruct", reason="a second copy of a large model's weights may not fit on the card")
def test_a_second_start_on_the_card_loads_its_converted_weights_and_gives_the_same_logits(setup, report):
    checkpoint, runner, n = setup
    ids = checkpoint.tokenizer.encode("The capital of France is")
    table = [3, 1]
    first = runner.step([SequenceStep(tokens=ids, start_pos=0, block_table=table)])[0]
    caches = Caches(runner.weight_cache.entry.parents[2])
    started = time.perf_counter()
    again = TtnnModelRunner(checkpoint, runner.mesh, max_seq_len=4096, caches=caches)
    took = time.perf_counter() - started
    assert again.weight_cache.hit
    assert torch.equal(again.step([SequenceStep(tokens=ids, start_pos=0, block_table=table)])[0], first)
    again.close()
    report(f"Wormhole ({n} chips): a second start loaded {again.weight_cache.loaded} tensors from the cache in {took:.1f} s")
