"""The ttnn backend on a real Wormhole card (skipped where no /dev/tenstorrent exists).

Run on a host with cards:  make test-wormhole
These have NOT run on a card yet. Set JUPYTER_TT_TEST_MODEL to a Llama checkpoint (a Hugging Face
folder or .gguf) to measure it instead of the embedded SmolLM2-135M-Instruct; the public figures
next to ours are tt-metal's for Llama-3.1-8B, as its PERF.md states them (``published.py``), so
compare like with like.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from jupyter_tt.devices.sfpi import installed_ttnn_sfpi
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
def setup():
    import ttnn

    sfpi = installed_ttnn_sfpi()
    if sfpi.error:  # else ttnn fails at its first kernel build, deep inside open_mesh_device
        pytest.fail(sfpi.error)
    n = ttnn.GetNumAvailableDevices()
    shape = (2, n // 2) if n == 8 else (1, n)
    mesh = ttnn.open_mesh_device(ttnn.MeshShape(*shape), **MESH_OPTIONS)
    checkpoint = load_checkpoint(MODEL, progress=False)
    runner = TtnnModelRunner(checkpoint, mesh, max_seq_len=4096)
    yield checkpoint, runner, n
    runner.close()
    ttnn.close_mesh_device(mesh)


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
