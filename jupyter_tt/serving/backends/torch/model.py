"""A Llama-family transformer in plain torch, reading and writing a paged KV cache.

gpt-fast's shape: the sizes (``ModelArgs``, shared by every backend in ``serving/llama.py``), then ``RMSNorm``, ``Attention``,
``FeedForward``, ``Block`` and ``Transformer``. What differs is the batch: the tokens of many
sequences are packed into one ``[T]`` row (each sequence adds a prefill chunk or one decode token),
so every linear layer runs once per step; attention then looks at each sequence's own context,
gathered from the paged cache through its block table (see ``Batch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...llama import ModelArgs, precompute_rope


@dataclass
class Batch:
    """Where the packed tokens of one step go, built by the model runner.

    ``T`` tokens of ``B`` sequences; sequence b contributes ``q_lens[b]`` tokens at positions
    ``start_pos[b]...`` and then attends to ``ctx_lens[b] = start_pos[b] + q_lens[b]`` positions.
    """

    positions: torch.Tensor  # [T] position of each packed token
    slots: torch.Tensor  # [T] cache slot (block * block_size + offset) each token's K/V is written to
    context_blocks: torch.Tensor  # [B * N] each sequence's N context blocks (C = N * block_size), padded with block 0
    attn_mask: torch.Tensor  # [B, 1, Q, C] bool: query i of sequence b may see context position j
    attn_bias: torch.Tensor | None  # [kv_heads * B, 1, C] float 0/-inf, for decode-only steps (Q == 1)
    causal: bool  # one sequence read from position 0: plain causal attention, no mask needed
    unpack: torch.Tensor  # [B, Q] packed index of query i of sequence b (padding repeats a valid one)
    pack: torch.Tensor  # [T] index into the flattened [B*Q] padded queries for each packed token
    logits_index: torch.Tensor  # [S] packed tokens whose next-token logits are wanted


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for ``apply_rope``: cos as is, sin with the sign of rotate-half folded into its first half."""
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in three ops: x [T, heads, head_dim]; tables [T, 1, head_dim] from ``rope_tables``.

    rotate_half(x) * sin == roll(x, half) * signed_sin, so no slicing, negation or concatenation.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query per sequence: q [B, heads, d], k/v [kv_heads * B, C, d], bias [kv_heads * B, 1, C] -> [B, heads*d].

    Three ops straight on the gathered cache: scale, mask and q @ k^T in one ``baddbmm``, softmax,
    then ``bmm`` with v. On a CPU this beats the general SDPA kernel, whose setup dominates at Q=1.
    ``bias`` is 0 where a sequence may look, else -inf.
    """
    B, H, D = q.shape
    kv_heads = k.shape[0] // B
    group = H // kv_heads
    qg = q.reshape(B, kv_heads, group, D).transpose(0, 1).reshape(kv_heads * B, group, D)  # grouped by KV head
    scores = torch.baddbmm(bias, qg, k.transpose(1, 2), alpha=D**-0.5)  # [kv * B, group, C]
    out = torch.bmm(torch.softmax(scores, dim=-1), v)  # [kv * B, group, d]
    return out.view(kv_heads, B, group, D).transpose(0, 1).reshape(B, H * D)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.shape = (dim,)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # the float32 residual stream: one op
            return torch.rms_norm(x, self.shape, self.weight, self.eps)
        # In float32 whatever the model's dtype, as transformers does.
        return F.rms_norm(x.float(), self.shape, self.weight.float(), self.eps).to(x.dtype)


class Int8Linear(nn.Module):
    """Weight-only int8 (one scale per output row): gpt-fast's int8 mode.

    Decoding reads every weight once per step, so on a CPU the step time follows the bytes of
    weights: int8 reads a quarter of float32's. Inputs are rounded to bfloat16 (the int8 kernel's
    fast path); the output is bfloat16 for decode-sized inputs and float32 for prefill chunks.
    """

    weight: torch.Tensor  # buffers (register_buffer): declared for type checkers
    scales: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.out_features = w.shape[0]

    #: Above this many rows (a prefill chunk) the int8 kernel scales worse than dequantizing the
    #: weight and running a float32 matmul (measured on a 2-core AVX2 machine).
    max_int8_rows = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.to(torch.bfloat16)  # both paths see the same rounded input; x is [T, in] here
        if x2.shape[0] <= self.max_int8_rows:
            return torch._weight_int8pack_mm(x2, self.weight, self.scales)
        # A prefill chunk: scale the output rows, not the weight (one pass over the weight less).
        return (x2.float() @ self.weight.float().T).mul_(self.scales.float())


def quantize_int8(model: "Transformer") -> "Transformer":
    """Replace every linear layer (the LM head included) with an ``Int8Linear``.

    The embedding table goes to bfloat16 (it is only indexed); norms and the residual stream stay float32.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    model.tok_embeddings.to(torch.bfloat16)
    return model


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, batch: Batch) -> torch.Tensor:
        """``k_cache``/``v_cache``: this layer's ``[kv_heads, blocks, block_size, d]``."""
        T, H, KV = x.shape[0], self.n_heads, self.n_kv_heads
        q_size = H * self.head_dim
        # Attention math in float32 whatever the weights: CPUs without bf16 matmul units run
        # bfloat16 bmm/SDPA many times slower. RoPE turns q and k in one go.
        qkv = self.wqkv(x).float().view(T, H + 2 * KV, self.head_dim)
        qk = apply_rope(qkv[:, : H + KV], cos, sin)
        q = qk[:, :H]
        # Caches as [kv_heads, blocks * block_size, d] (views), written at the tokens' slots.
        k_cache.flatten(1, 2).index_copy_(1, batch.slots, qk[:, H:].transpose(0, 1).to(k_cache.dtype))
        v_cache.flatten(1, 2).index_copy_(1, batch.slots, qkv[:, H + KV :].transpose(0, 1).to(v_cache.dtype))

        B, Q = batch.unpack.shape
        # Whole blocks at once (index_select copies rows; it is 4x faster than advanced indexing here).
        context = (KV * B, -1, self.head_dim)  # [kv_heads, B * N, block_size, d] -> [kv_heads * B, C, d]: a view
        kp = k_cache.index_select(1, batch.context_blocks).view(context).float()
        vp = v_cache.index_select(1, batch.context_blocks).view(context).float()
        if Q == 1 and batch.attn_bias is not None:  # decode-only step: one query per sequence, already in order
            out = decode_attention(q, kp, vp, batch.attn_bias)
        else:
            qp = q[batch.unpack].transpose(1, 2)  # [B, heads, Q, d]
            mask = None if batch.causal else batch.attn_mask  # causal: the kernel skips the masked half
            kp, vp = kp.view(KV, B, -1, self.head_dim).transpose(0, 1), vp.view(KV, B, -1, self.head_dim).transpose(0, 1)
            out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, is_causal=batch.causal, enable_gqa=True)
            out = out.transpose(1, 2).reshape(B * Q, q_size)[batch.pack]
        out = out.to(x.dtype)
        return self.wo(out)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.intermediate_size, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate).mul_(up))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, k_cache, v_cache, batch: Batch) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, k_cache, v_cache, batch)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    rope_cos: torch.Tensor  # buffers (register_buffer): declared for type checkers
    rope_sin: torch.Tensor

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_tables(*precompute_rope(args, args.max_seq_len))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.inference_mode()  # ~10% less per-op overhead than no_grad at decode sizes
    def forward(self, tokens: torch.Tensor, batch: Batch, kv_cache: torch.Tensor) -> torch.Tensor:
        """Logits ``[S, vocab]`` for ``batch.logits_index``; ``kv_cache`` is ``[layers, 2, kv_heads, blocks, block_size, d]``."""
        x = self.tok_embeddings(tokens).to(self.norm.weight.dtype)  # the residual stream's dtype
        cos, sin = self.rope_cos[batch.positions, None], self.rope_sin[batch.positions, None]  # [T, 1, head_dim]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_cache[i, 0], kv_cache[i, 1], batch)
        return self.output(self.norm(x[batch.logits_index]))

    @classmethod
    def from_weights(cls, args: ModelArgs, weights: dict[str, torch.Tensor], dtype=torch.float32) -> "Transformer":
        """Build from Hugging Face-named weights (as ``load_checkpoint`` gives them)."""
        with torch.device("meta"):
            model = cls(args)
        w = weights
        state = {
            "tok_embeddings.weight": w["model.embed_tokens.weight"],
            "norm.weight": w["model.norm.weight"],
            "output.weight": w["model.embed_tokens.weight"] if args.tie_embeddings else w["lm_head.weight"],
        }
        for i in range(args.n_layers):
            p = f"model.layers.{i}."
            state[f"layers.{i}.attention_norm.weight"] = w[p + "input_layernorm.weight"]
            state[f"layers.{i}.ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
            state[f"layers.{i}.attention.wqkv.weight"] = torch.cat(
                [w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"], w[p + "self_attn.v_proj.weight"]]
            )
            state[f"layers.{i}.attention.wo.weight"] = w[p + "self_attn.o_proj.weight"]
            state[f"layers.{i}.feed_forward.w13.weight"] = torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]])
            state[f"layers.{i}.feed_forward.w2.weight"] = w[p + "mlp.down_proj.weight"]
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
        model.rope_cos, model.rope_sin = rope_tables(*precompute_rope(args, args.max_seq_len))
        if args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
        return model.eval()
