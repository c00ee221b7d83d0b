"""The engine's model runner on ttnn (``model.TtnnLlama``): prefill one sequence at a time, decode a
fixed batch at once, captured as a trace on a card and replayed. As ``torch/runner.py`` is to
``torch/model.py``."""

from __future__ import annotations

import dataclasses
import importlib

import torch

from ....caches import Caches
from ...checkpoint import Checkpoint, checkpoint_digest
from ...engine.runner import ModelRunner, SequenceStep
from .model import WEIGHT_FORMATS, TtnnLlama, tensor_parallel_degree
from .paging import decode_indices, page_table, wanted_logits
from .weights import WeightCache, ttnn_version


class TtnnModelRunner(ModelRunner):
    """The engine's model runner on a ttnn mesh (``jupyter_tt.open_mesh_device()``) or on the golden stand-in."""

    def __init__(self, checkpoint: Checkpoint, mesh, *, ttnn=None, block_size: int = 32, max_batch: int = 32,
                 max_seq_len: int | None = None, kv_cache_bytes: int = 1 << 30, weights: str = "accuracy",
                 trace: bool | None = None, caches: Caches | None = None):
        """``ttnn``: the module to run on (default: the real ttnn). ``trace``: capture decode as a trace
        (default: on a real mesh, not on the golden stand-in). ``caches``: where converted weights are
        kept between starts (``weights.WeightCache``; None: converted at every start)."""
        if ttnn is None:
            ttnn = importlib.import_module("ttnn")
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
        from .golden import GoldenTTNN

        self.golden = isinstance(ttnn, GoldenTTNN)
        self.trace = (not self.golden) if trace is None else trace
        self.max_seq_len = min(max_seq_len or checkpoint.args.max_seq_len, checkpoint.args.max_seq_len)
        self.args = dataclasses.replace(checkpoint.args, max_seq_len=self.max_seq_len)
        self.block_size = block_size
        self.prefill_chunk_multiple = block_size  # chunks start on block boundaries (paged_fill_cache)
        self.blocks_per_seq = -(-self.max_seq_len // block_size)
        a = self.args
        tp = tensor_parallel_degree(a, mesh.get_num_devices())
        per_block = a.n_layers * 2 * (a.n_kv_heads // tp) * block_size * a.head_dim * 2  # bfloat16, per chip
        self.num_blocks = max(min(kv_cache_bytes // per_block, max_batch * self.blocks_per_seq), self.blocks_per_seq)
        self.ttnn, self.mesh = ttnn, mesh
        self.weight_cache = None
        if caches is not None:
            self.weight_cache = WeightCache(
                caches, checkpoint_digest(checkpoint.source, caches.memo_dir()), ttnn_version=ttnn_version(ttnn),
                mesh_shape=tuple(mesh.shape), weight_format=weights, tp=tp)  # the shape as tt_transformers reads it
        try:
            self.model = TtnnLlama(ttnn, mesh, a, checkpoint.weights, num_blocks=self.num_blocks, block_size=block_size,
                                   max_seq_len=self.max_seq_len, max_batch=max_batch, weight_format=weights,
                                   cache=self.weight_cache)
        except BaseException:
            if self.weight_cache is not None:
                self.weight_cache.close()
            raise
        self.max_batch = max_batch
        self._trace_id = None
        self._inputs = None  # the decode inputs a trace reads, on the device
        self._trace_out = None

    def page_row(self, block_table: list[int]) -> torch.Tensor:
        return page_table([block_table], 1, self.blocks_per_seq, self.num_blocks)[0]  # padded with the scratch block

    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
        logits: dict[int, torch.Tensor] = {}
        decodes = decode_indices(sequences)
        for i, s in enumerate(sequences):
            if i not in decodes:
                logits[i] = self.model.prefill(s.tokens, s.start_pos, self.page_row(s.block_table))
        for first in range(0, len(decodes), self.max_batch):
            group = decodes[first : first + self.max_batch]
            rows = self.decode([sequences[i] for i in group])
            logits.update(zip(group, rows))
        return wanted_logits(logits, sequences, self.args.vocab_size)

    def decode(self, sequences: list[SequenceStep]) -> torch.Tensor:
        ttnn, B = self.ttnn, self.max_batch
        ids = torch.zeros(1, B, dtype=torch.int32)
        cur = torch.full((B,), -1, dtype=torch.int32)
        tables = page_table([s.block_table for s in sequences], B, self.blocks_per_seq, self.num_blocks)
        for b, s in enumerate(sequences):
            ids[0, b], cur[b] = s.tokens[0], s.start_pos
        rope_pos = cur.clamp(min=0)[None]
        host = [(ids, ttnn.uint32), (rope_pos, ttnn.uint32), (cur, ttnn.int32), (tables, ttnn.int32)]
        if not self.trace:
            out = self.model.decode(*(self.model.host(t, dtype) for t, dtype in host))
        else:
            out = self._traced_decode(host)
        return self.model.logits_to_torch(out)[: len(sequences)]

    def _traced_decode(self, host):
        """Decode as a trace: the first call compiles and captures, later calls copy the inputs and replay."""
        ttnn, mesh = self.ttnn, self.mesh
        if self._trace_id is None:
            self._inputs = [self.model.host(t, dtype) for t, dtype in host]
            self.model.decode(*self._inputs)  # compile the kernels outside the trace
            self._trace_id = ttnn.begin_trace_capture(mesh, cq_id=0)
            self._trace_out = self.model.decode(*self._inputs)
            ttnn.end_trace_capture(mesh, self._trace_id, cq_id=0)
        for (t, dtype), device_tensor in zip(host, self._inputs):
            ttnn.copy_host_to_device_tensor(self.model.host(t, dtype, device=False), device_tensor)
        ttnn.execute_trace(mesh, self._trace_id, cq_id=0, blocking=False)
        return self._trace_out

    def close(self) -> None:
        if self._trace_id is not None:
            self.ttnn.release_trace(self.mesh, self._trace_id)
            self._trace_id = None
        if self.weight_cache is not None:
            self.weight_cache.close()
