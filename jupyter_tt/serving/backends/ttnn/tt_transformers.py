"""The engine's model runner on tt-metal's own tuned Llama (``models.tt_transformers``), where importable.

tt-metal ships ``models/tt_transformers`` in its source tree only (not in the ttnn wheel); with a
tt-metal source install on ``PYTHONPATH``, ``jupyter tt serve --backend ttnn --ttnn-impl tt-transformers``
serves through its ``Generator``, the implementation tt-inference-server and vLLM's TT plugin drive.
The engine, API and benchmarks stay ours; only prefill and decode go to the Generator, through the
same calls vLLM makes (``prefill_forward_text``, ``decode_forward_text``) on a paged KV cache.

tt_transformers reads its weights itself from a Hugging Face folder (``HF_MODEL``), so the model
must be one (a .gguf file is refused). It prefills whole prompts, so chunks the engine sends are
gathered until the prompt's last one. Not yet validated on hardware (see docs/admin/validated.md).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ....errors import TTError
from ...checkpoint import Checkpoint
from ...engine.runner import ModelRunner, SequenceStep
from .paging import decode_indices, page_table, wanted_logits

#: tt_transformers' ``demo/trace_region_config.py`` ``get_supported_trace_region_size`` (tt-metal
#: 075e2b4), by base model name and device name; a model or device it does not list gets the demo's
#: ``device_params`` default, 50 MB (``simple_text_demo.py``).
TRACE_REGION_SIZES = {
    "Llama-3.1-8B": {"N150": 25_000_000, "N300": 38_000_000, "T3K": 50_000_000},
    "Llama-3.3-70B": {"T3K": 90_000_000},
    "Llama-3.1-70B": {"T3K": 90_000_000},
}
DEFAULT_TRACE_REGION_SIZE = 50_000_000


def trace_region_size(model: str, mesh_device: str) -> int:
    """The trace region tt_transformers' demo opens ``model`` (a repo id or folder) with on ``mesh_device``.
    The base name is the model's up to its size, as tt_transformers' ``get_base_model_name`` reads it
    (``Llama-3.1-8B-Instruct`` -> ``Llama-3.1-8B``)."""
    import re

    name = model.strip("/").split("/")[-1]
    match = re.match(r"(.*?\d+[bB])-", name + "-")
    base = match.group(1) if match else name
    return TRACE_REGION_SIZES.get(base, {}).get(mesh_device, DEFAULT_TRACE_REGION_SIZE)


def create_tt_model():
    """tt_transformers' ``create_tt_model``: in ``tt/common.py`` in current tt-metal (importing the demo
    module, which older releases held it in, pulls in pytest and calls ttnn at import time)."""
    try:
        from models.tt_transformers.tt.common import create_tt_model as create
    except ImportError:
        from models.tt_transformers.demo.simple_text_demo import create_tt_model as create
    return create


class TTTransformersRunner(ModelRunner):

    @staticmethod
    def check_available() -> None:
        if importlib.util.find_spec("models") is None or importlib.util.find_spec("models.tt_transformers") is None:
            raise TTError(
                "--ttnn-impl tt-transformers needs tt-metal's models.tt_transformers, which is in tt-metal's source "
                "tree only (not the ttnn wheel): clone tenstorrent/tt-metal at the release matching your ttnn, put it "
                "on PYTHONPATH, or serve with --ttnn-impl jupyter-tt"
            )

    def __init__(self, checkpoint: Checkpoint, mesh, *, max_batch: int = 32, block_size: int = 32, max_seq_len: int = 4096):
        """``mesh``: opened from ``mesh_plans(...)[Runner.TT_TRANSFORMERS]`` with ``trace_region_size()``.
        ``HF_MODEL`` and ``TT_CACHE_PATH`` (this user's cache, per model) must be set before: ``prepare()``."""
        import ttnn
        from models.tt_transformers.tt.common import PagedAttentionConfig
        from models.tt_transformers.tt.generator import Generator
        from models.tt_transformers.tt.model_config import DecodersPrecision

        self.args = checkpoint.args
        self.block_size, self.max_batch = block_size, max_batch
        self.blocks_per_seq = -(-min(max_seq_len, self.args.max_seq_len) // block_size)
        self.num_blocks = max_batch * self.blocks_per_seq  # the last one is kept back as scratch for padding rows
        paged = PagedAttentionConfig(block_size=block_size, max_num_blocks=self.num_blocks)
        self.num_blocks -= 1
        model_args, model, kv_cache, _ = create_tt_model()(
            mesh, instruct=True, max_batch_size=max_batch, max_seq_len=self.blocks_per_seq * block_size,
            optimizations=lambda a: DecodersPrecision.performance(a.n_layers, a.model_name),
            paged_attention_config=paged, dtype=ttnn.bfloat8_b,
        )
        self.generator = Generator([model], [model_args], mesh, tokenizer=checkpoint.tokenizer)
        self.kv_cache = [kv_cache]
        self._prompts: dict[int, list[int]] = {}  # first block -> prompt tokens gathered so far

    @staticmethod
    def prepare(checkpoint: Checkpoint) -> None:
        """Refuse what tt_transformers cannot read, and point it at the model (``HF_MODEL``)."""
        if not Path(checkpoint.source).is_dir():
            raise TTError(f"tt_transformers reads Hugging Face folders, not {checkpoint.source}: give --model a folder")
        os.environ["HF_MODEL"] = checkpoint.source

    def _tables(self, tables: list[list[int]], rows: int) -> torch.Tensor:
        return page_table(tables, rows, self.blocks_per_seq, self.num_blocks)

    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
        logits: dict[int, torch.Tensor] = {}
        decodes = decode_indices(sequences)
        for i, s in enumerate(sequences):
            if i in decodes:
                continue
            key = s.block_table[0]
            prompt = self._prompts.pop(key, []) if s.start_pos else []
            prompt = prompt + s.tokens
            if not s.want_logits:  # more of this prompt comes in a later step
                self._prompts[key] = prompt
                continue
            out = self.generator.prefill_forward_text(
                torch.tensor([prompt]), page_table=self._tables([s.block_table], 1), kv_cache=self.kv_cache,
                prompt_lens=torch.tensor([len(prompt)]),
            )
            logits[i] = out.reshape(-1)[: self.args.vocab_size].float()
        for first in range(0, len(decodes), self.max_batch):
            group = [sequences[i] for i in decodes[first : first + self.max_batch]]
            pad = self.max_batch - len(group)
            # Padding rows as vLLM's TT model runner sends them: token 0 at position -1 ("no position"),
            # which tt_transformers' paged ops skip (vllm v1/worker/tt_model_runner.py).
            tokens = torch.tensor([[s.tokens[0]] for s in group] + [[0]] * pad)
            positions = torch.tensor([s.start_pos for s in group] + [-1] * pad)
            out = self.generator.decode_forward_text(
                tokens, positions, page_table=self._tables([s.block_table for s in group], self.max_batch),
                kv_cache=self.kv_cache, enable_trace=True,
            )
            rows = out.reshape(self.max_batch, -1)[: len(group), : self.args.vocab_size].float()
            logits.update(zip(decodes[first : first + self.max_batch], rows))
        return wanted_logits(logits, sequences, self.args.vocab_size)
