"""The ttnn backend's converted weights, kept between starts (``backends/ttnn/weights.py``), on the golden
stand-in: ttnn's own ``as_tensor`` writes and reads the cache files on the host (real ``.tensorbin``
files), and the golden mesh holds what they give. A second start loads them and gives the same logits;
a changed checkpoint, ttnn version or mesh misses; a start that dies half way leaves nothing to load.
How much faster the second start is: ``benchmarks/ttnn_weight_cache.py`` (a number, not a test)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from test_golden import golden_runner

from jupyter_tt.caches import CacheKind, Caches
from jupyter_tt.serving.backends.ttnn import weights as weight_cache
from jupyter_tt.serving.checkpoint import load_checkpoint
from jupyter_tt.serving.engine import SequenceStep


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ck = load_checkpoint("smollm2-135m-instruct", progress=False)
    copy = tmp_path_factory.mktemp("models") / "smollm2.gguf"
    shutil.copyfile(ck.source, copy)  # a file of the test's own, so that it can be changed
    return replace(ck, source=str(copy))


def first_logits(runner, tokenizer) -> torch.Tensor:
    ids = tokenizer.encode("The capital of France is")
    return runner.step([SequenceStep(tokens=ids, start_pos=0, block_table=[1, 0])])[0]


def test_a_second_start_loads_the_converted_weights_and_gives_the_same_logits(checkpoint, tmp_path, report):
    caches = Caches(tmp_path / "cache")
    plain, _ = golden_runner(checkpoint, max_seq_len=128)
    first, ttnn = golden_runner(checkpoint, max_seq_len=128, caches=caches)
    assert not first.weight_cache.hit and first.weight_cache.converted == 30 * 7 + 3  # 7 per layer, embed, norm, head
    files = sorted((first.weight_cache.tensors).glob("*.tensorbin"))
    assert len(files) == 30 * 7 + 3 and ttnn.calls[("as_tensor", "ttnn on the host")] == 213
    first_out = first_logits(first, checkpoint.tokenizer)
    first.close()
    second, _ = golden_runner(checkpoint, max_seq_len=128, caches=caches)
    assert second.weight_cache.hit and second.weight_cache.loaded == 213 and second.weight_cache.converted == 0
    assert torch.equal(first_logits(second, checkpoint.tokenizer), first_out)
    assert torch.equal(first_logits(plain, checkpoint.tokenizer), first_out)  # the cache changes no value
    entry = second.weight_cache.entry
    about = caches.entries()[0].about
    assert about["ttnn"] == weight_cache.ttnn_version(ttnn) != "unknown" and about["mesh_shape"] == [1, 1]
    second.close()
    report(f"ttnn weight cache (golden stand-in): 213 tensors written by ttnn.as_tensor, reloaded with identical "
           f"logits; {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB in {entry}")


def test_a_changed_checkpoint_ttnn_version_or_mesh_is_another_entry(checkpoint, tmp_path, monkeypatch):
    caches = Caches(tmp_path / "cache")
    golden_runner(checkpoint, max_seq_len=64, caches=caches)[0].close()
    changed = tmp_path / "changed.gguf"
    shutil.copyfile(checkpoint.source, changed)
    with open(changed, "ab") as f:
        f.write(b"\0")  # other bytes: another digest
    runner = golden_runner(replace(checkpoint, source=str(changed)), max_seq_len=64, caches=caches)[0]
    assert not runner.weight_cache.hit
    runner.close()
    monkeypatch.setattr("jupyter_tt.serving.backends.ttnn.runner.ttnn_version", lambda ttnn: "0.99.0")
    runner = golden_runner(checkpoint, max_seq_len=64, caches=caches)[0]
    assert not runner.weight_cache.hit  # a newer ttnn never reads an older one's files
    runner.close()
    monkeypatch.undo()
    runner = golden_runner(checkpoint, (1, 2), max_seq_len=64, caches=caches)[0]
    assert not runner.weight_cache.hit
    runner.close()
    assert len([e for e in caches.entries() if e.kind is CacheKind.TTNN_WEIGHTS]) == 4
    assert golden_runner(checkpoint, max_seq_len=64, caches=caches)[0].weight_cache.hit  # the first is still there


def test_a_start_that_fails_half_way_leaves_nothing_a_later_start_could_load(checkpoint, tmp_path):
    caches = Caches(tmp_path / "cache")
    broken = replace(checkpoint, weights={k: v for k, v in checkpoint.weights.items() if "layers.20." not in k})
    with pytest.raises(KeyError):
        golden_runner(broken, max_seq_len=64, caches=caches)
    (entry,) = caches.entries()
    assert not (entry.path / "tensors").exists() and not list(entry.path.glob(".building-*"))
    assert not entry.held
    runner = golden_runner(checkpoint, max_seq_len=64, caches=caches)[0]
    assert not runner.weight_cache.hit and (runner.weight_cache.entry / "tensors" / "complete").exists()
