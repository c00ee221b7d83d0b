"""The CPU model runner: the same Llama as ``model.py``, built as one OpenVINO graph per server.

Why OpenVINO: on a CPU a small model's step is mostly the cost of launching ops, not of doing them. The
torch runner launches about 30 ops per layer from Python (some 900 per step for the embedded model);
here the whole step is one compiled graph, so a decode step costs about what its weights take to read.
Attention is OpenVINO's ``PagedAttentionExtension``: it writes each new token's K/V into the cache blocks
and reads the context from them in place, through the same block tables, past lengths and packed
prompt chunks as the engine hands every runner (``SequenceStep``). No gathered copies, no masks.

The graph is built from the weights with OpenVINO's op set (no export, no compiler toolchain) from the
torch reference's own modules, so both runners hold the same int8 values: int8 weights with a float
scale per output row, which OpenVINO runs as compressed fully-connected layers. OpenVINO picks the
kernels for the CPU it finds (AVX2, AVX-512, AMX): bfloat16 activations and KV cache where the CPU has
bfloat16 units, float32 elsewhere.

``_PagedAttentionExtension`` is OpenVINO's experimental Python binding ("no backward compatibility
guaranteed"): its inputs are checked against the pinned version in ``PAGED_ATTENTION_TAIL``, and a
different version fails at build with a message rather than at the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import Checkpoint
from ...engine.runner import ModelRunner, SequenceStep
from ...llama import ModelArgs
from ..torch.model import Transformer, quantize_int8
from . import check_available

#: Weight formats of this backend: "int8" (per-row weight-only, as the torch reference's int8) or "float32".
WEIGHT_FORMATS = ("int8", "float32")
#: Tokens per cache block: the block size OpenVINO's CPU PagedAttention kernel is built for.
BLOCK_SIZE = 32


def _const(value) -> object:
    import openvino.opset13 as op

    return op.constant(np.array(value, order="C"))  # (ascontiguousarray would make a scalar 1-d)


def _paged_attention_tail() -> list:
    """PagedAttention's inputs after ``max_context_len`` (OpenVINO 2026.x: 28 inputs in all), each disabled:
    score aggregation, cache rotation, xattention, sinks, adaptive R-KV and token types."""
    i32, f32 = np.int32, np.float32
    empty = [np.zeros(0, i32), np.zeros(0, i32), np.zeros(0, i32), np.zeros(0, f32), np.zeros(0, f32)]
    xattention = [np.array(128, i32), np.array(8, i32)]
    rest = [np.zeros(0, f32), np.array(0, i32), np.zeros(0, i32), np.zeros(0, i32), np.zeros(0, i32), np.zeros(0, i32),
            np.zeros(0, np.uint8), np.zeros(0, i32)]
    return [_const(v) for v in empty + xattention + rest]


class _GraphBuilder:
    """Builds ``Transformer``'s forward in OpenVINO ops, one layer at a time."""

    def __init__(self, model: Transformer, cache_type):
        import openvino as ov
        import openvino.opset13 as op

        self.ov, self.op, self.model, self.args, self.cache_type = ov, op, model, model.args, cache_type
        self.inputs: list = []

    def parameter(self, shape: list[int], dtype, name: str):
        p = self.op.parameter(self.ov.PartialShape(shape), dtype, name=name)
        p.output(0).get_tensor().set_names({name})
        self.inputs.append(p)
        return p

    def linear(self, x, module):
        """``x @ W.T``; int8 weights stay int8 constants with their scales, which OpenVINO runs compressed."""
        op = self.op
        if hasattr(module, "scales"):
            weight = op.convert(_const(module.weight.numpy()), self.ov.Type.f32)
            weight = op.multiply(weight, _const(module.scales.float().numpy()[:, None]))
        else:
            weight = _const(module.weight.detach().float().numpy())
        return op.matmul(x, weight, False, True)

    def rms_norm(self, x, norm):
        op = self.op
        var = op.reduce_mean(op.multiply(x, x), _const(np.array([-1], dtype=np.int64)), True)
        inv = op.divide(_const(np.float32(1)), op.sqrt(op.add(var, _const(np.float32(norm.eps)))))
        return op.multiply(op.multiply(x, inv), _const(norm.weight.detach().float().numpy()))

    def rope(self, x, heads: int, cos, signed_sin):
        """``apply_rope`` (rotate-half folded into the signed sin table) on ``x`` [T, heads * d]."""
        op, d = self.op, self.args.head_dim
        x = op.reshape(x, _const(np.array([-1, heads, d], dtype=np.int64)), False)
        axis, step = _const(np.array([2], dtype=np.int64)), _const(np.array([1], dtype=np.int64))
        half, end, zero = _const(np.array([d // 2], dtype=np.int64)), _const(np.array([d], dtype=np.int64)), _const(np.array([0], dtype=np.int64))
        rolled = op.concat([op.slice(x, half, end, step, axis), op.slice(x, zero, half, step, axis)], 2)
        out = op.add(op.multiply(x, cos), op.multiply(rolled, signed_sin))
        return op.reshape(out, _const(np.array([-1, heads * d], dtype=np.int64)), False)

    def build(self):
        ov, op, a, m = self.ov, self.op, self.args, self.model
        i32, i64 = ov.Type.i32, ov.Type.i64
        tokens = self.parameter([-1], i64, "input_ids")
        positions = self.parameter([-1], i64, "position_ids")
        paging = [
            self.parameter([-1], i32, "past_lens"),
            self.parameter([-1], i32, "subsequence_begins"),
            self.parameter([-1], i32, "block_indices"),
            self.parameter([-1], i32, "block_indices_begins"),
        ]
        max_context_len = self.parameter([], i32, "max_context_len")
        logits_index = self.parameter([-1], i64, "logits_index")
        table = m.tok_embeddings.weight.detach().float().numpy()
        if hasattr(m.output, "scales"):
            # int8: the table (only indexed) in float16, half the bytes. Marked as a decompression, the
            # Convert stays in the graph; otherwise the CPU plugin folds the table into a float32 copy.
            table = op.convert(_const(table.astype(np.float16)), ov.Type.f32)
            table.get_rt_info()["decompression"] = ""
        else:
            table = _const(table)
        x = op.gather(table, tokens, _const(np.int64(0)))
        at = _const(np.int64(1))
        cos = op.unsqueeze(op.gather(_const(m.rope_cos.numpy()), positions, _const(np.int64(0))), at)
        sin = op.unsqueeze(op.gather(_const(m.rope_sin.numpy()), positions, _const(np.int64(0))), at)
        H, KV, d = a.n_heads, a.n_kv_heads, a.head_dim
        attention_args = [_const(np.float32(d**-0.5)), _const(np.int32(0)), _const(np.zeros(0, np.float32))]
        tail = _paged_attention_tail()
        from openvino._pyopenvino.op import _PagedAttentionExtension

        for i, layer in enumerate(m.layers):
            k_cache = self.parameter([-1, KV, BLOCK_SIZE, d], self.cache_type, f"key_cache.{i}")
            v_cache = self.parameter([-1, KV, BLOCK_SIZE, d], self.cache_type, f"value_cache.{i}")
            qkv = self.linear(self.rms_norm(x, layer.attention_norm), layer.attention.wqkv)
            q, k, v = op.variadic_split(qkv, at, _const(np.array([H * d, KV * d, KV * d], dtype=np.int64))).outputs()
            q, k = self.rope(q, H, cos, sin), self.rope(k, KV, cos, sin)
            args = [q, k, v, k_cache, v_cache, *paging, *attention_args, max_context_len, *tail]
            attention = _PagedAttentionExtension([n if isinstance(n, ov.Output) else n.output(0) for n in args])
            info = attention.get_rt_info()
            for key, value in {"k_head_size": d, "num_k_heads": KV, "v_head_size": d, "num_v_heads": KV}.items():
                info[key] = value
            x = op.add(x, self.linear(attention.output(0), layer.attention.wo))
            gate_up = self.linear(self.rms_norm(x, layer.ffn_norm), layer.feed_forward.w13)
            gate, up = op.variadic_split(gate_up, at, _const(np.int64([a.intermediate_size] * 2))).outputs()
            x = op.add(x, self.linear(op.multiply(op.swish(gate), up), layer.feed_forward.w2))
        x = self.rms_norm(op.gather(x, logits_index, _const(np.int64(0))), m.norm)
        return ov.Model([self.linear(x, m.output)], self.inputs, "llama")


def cpu_precision() -> str:
    """What OpenVINO computes in by default on this CPU: "bf16" where it has bfloat16 units (AVX512-BF16, AMX), else "f32"."""
    import openvino as ov

    return "bf16" if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "f32"


def default_precision() -> str:
    """What this backend computes in unless told: bfloat16 where the CPU has AMX (OpenVINO's own choice
    there), float32 elsewhere. On a CPU with AVX512-BF16 but no AMX, OpenVINO picks bfloat16 too, but
    float32 measured faster there (2-core Xeon, the embedded model, side by side in one run: TTFT
    -35 % at 1,024 prompt tokens and -40 % at 128, output tokens/s at 8 requests +30 %, TPOT alike)."""
    if cpu_precision() != "bf16":
        return "f32"
    try:
        amx = "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        amx = False
    return "bf16" if amx else "f32"


class OpenVINOModelRunner(ModelRunner):
    """The model as one OpenVINO graph on the CPU, on a paged KV cache in OpenVINO tensors."""

    block_size = BLOCK_SIZE

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        kv_cache_bytes: int = 256 * 2**20,
        weights: str = "int8",
        precision: str | None = None,
    ):
        """``precision``: "bf16" or "f32" for activations and KV cache (default: ``default_precision()``)."""
        check_available()
        import openvino as ov

        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
        self.args: ModelArgs = checkpoint.args
        self.weights = weights
        self.precision = precision or default_precision()
        if self.precision not in ("bf16", "f32"):
            raise ValueError(f"precision must be bf16 or f32, not {self.precision!r}")
        cache_type = ov.Type.bf16 if self.precision == "bf16" else ov.Type.f32
        self.num_blocks = self.args.kv_cache_blocks(
            BLOCK_SIZE, kv_cache_bytes, torch.bfloat16 if self.precision == "bf16" else torch.float32
        )
        model = Transformer.from_weights(self.args, checkpoint.weights, torch.float32)
        if weights == "int8":
            model = quantize_int8(model)
        graph = _GraphBuilder(model, cache_type).build()
        del model
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_PRECISION_HINT": self.precision,
            "KV_CACHE_PRECISION": self.precision,  # the CPU kernel wants the cache in the compute precision
        }
        if weights == "int8":
            # Not OpenVINO's int8 activations (on by default for compressed weights): they triple the
            # logit error against transformers for no speed on this model (measured on AMX and AVX-512).
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"
        try:
            self.compiled = ov.Core().compile_model(graph, "CPU", config)
        except RuntimeError as e:
            if os.environ.get("ONEDNN_MAX_CPU_ISA"):
                raise RuntimeError(
                    f"OpenVINO cannot compile the model with ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']} set: "
                    "unset it, or serve with --backend torch"
                ) from e
            raise
        del graph
        self.request = self.compiled.create_infer_request()
        a = self.args
        shape = ov.Shape([self.num_blocks, a.n_kv_heads, BLOCK_SIZE, a.head_dim])
        # Key and value of each layer, written in place by PagedAttention. The memory is numpy's zeros
        # (calloc): the OS maps it as it is first written, so an idle server holds none of the cache.
        self.kv_cache = []
        for port in self.compiled.inputs:
            if port.get_any_name().startswith(("key_cache.", "value_cache.")):
                memory = np.zeros(tuple(shape), dtype=np.uint16 if cache_type == ov.Type.bf16 else np.float32)
                tensor = ov.Tensor(memory, shape, cache_type)  # shares ``memory``, which it keeps alive
                self.request.set_tensor(port, tensor)
                self.kv_cache.append((tensor, memory))

    def step(self, sequences: list[SequenceStep]) -> torch.Tensor:
        lengths = np.array([len(s.tokens) for s in sequences], dtype=np.int32)
        past = np.array([s.start_pos for s in sequences], dtype=np.int32)
        ends = np.cumsum(lengths, dtype=np.int32)
        context = past + lengths
        n_blocks = -(-context // BLOCK_SIZE)
        feed = {
            "input_ids": np.fromiter((t for s in sequences for t in s.tokens), dtype=np.int64, count=int(ends[-1])),
            "position_ids": np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in zip(past, lengths)]),
            "past_lens": past,
            "subsequence_begins": np.concatenate([[0], ends]).astype(np.int32),
            "block_indices": np.concatenate(
                [np.asarray(s.block_table[:n], dtype=np.int32) for s, n in zip(sequences, n_blocks)]
            ),
            "block_indices_begins": np.concatenate([[0], np.cumsum(n_blocks)]).astype(np.int32),
            "max_context_len": np.array(context.max(), dtype=np.int32),
        }
        wanted = (ends - 1)[[s.want_logits for s in sequences]].astype(np.int64)
        # Every sequence mid-prompt: the step still fills the cache; the graph computes one unused row.
        feed["logits_index"] = wanted if len(wanted) else np.zeros(1, dtype=np.int64)
        self.request.infer(feed, share_inputs=True)
        if not len(wanted):
            return torch.empty(0, self.args.vocab_size)
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())
