"""Llama on Wormhole through ttnn: the ``ttnn`` backend of the serving engine.

Shaped after tt-metal's ``models/tt_transformers``:
- weights converted once to tiled device tensors: attention in bfloat16 and the MLP and LM head in
  bfloat8_b (its "accuracy" setting; ``weights="performance"`` puts attention in bfloat8_b too);
  embedding, RoPE tables and norm weights row-major in bfloat16;
- activations ``[1, 1, tokens, dim]`` in bfloat16; a paged KV cache per layer,
  ``[blocks, kv_heads, block_size, head_dim]``, addressed through page tables;
- prefill one sequence at a time, padded to whole blocks: ``paged_fill_cache`` writes its K/V, then
  causal SDPA (or chunked SDPA over the cached prefix when the prompt arrives in chunks);
- decode for a fixed batch of ``max_batch`` (32) users at once: ``paged_update_cache`` and paged SDPA
  decode, with unused rows at position -1; on a card it is captured once as a trace and replayed;
- RoPE as tt_transformers computes it: cos/sin rows gathered per position with ``embedding``, and
  rotate-half as a matmul with a fixed ±1 matrix (so every user may be at its own position);
- on a mesh, tensor parallelism: QKV and the MLP's gate/up split by columns (heads), the output and
  down projections by rows, then ``all_reduce``. Where the heads do not divide among the chips
  (the embedded model's 3 KV heads on an n300), every chip holds the whole model. The mesh is one
  row of chips (a LoudBox 1×8, as tt_transformers opens it) and the reduction runs along it.

``runner.py`` drives it for the engine. The code runs against the ``ttnn`` module it is given: the real one on a card, or
``golden.GoldenTTNN``, which runs every op through ttnn's golden function on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ....errors import TTError
from ...llama import ModelArgs, precompute_rope

TILE = 32
#: ``ttnn.open_mesh_device`` options the backend needs: room for the decode trace
MESH_OPTIONS = {"trace_region_size": 64 << 20}
#: weight formats: name -> (attention weights, MLP weights, LM head), as tt_transformers' settings
WEIGHT_FORMATS = {"accuracy": ("bfloat16", "bfloat8_b", "bfloat8_b"), "performance": ("bfloat8_b", "bfloat8_b", "bfloat8_b")}


def tensor_parallel_degree(args: ModelArgs, devices: int) -> int:
    """How many chips split each layer: all of them where heads and widths divide, else 1 (replicated)."""
    n = devices
    if n > 1 and args.n_heads % n == 0 and args.n_kv_heads % n == 0 and args.intermediate_size % (n * TILE) == 0:
        return n
    return 1


@dataclass
class Layer:
    attn_norm: object
    wqkv: object
    wo: object
    ffn_norm: object
    w1: object
    w3: object
    w2: object
    k_cache: object
    v_cache: object


class TtnnLlama:
    """The model's tensors on a mesh and its two forward passes (prefill of one sequence, batched decode)."""

    def __init__(self, ttnn, mesh, args: ModelArgs, weights: dict, *, num_blocks: int, block_size: int = 32,
                 max_seq_len: int, max_batch: int = 32, weight_format: str = "accuracy", cache=None):
        """``cache``: a ``weights.WeightCache`` to load the converted weights from, or fill (None: convert)."""
        if block_size % TILE:
            raise ValueError(f"block_size must be a multiple of {TILE} (one tile), not {block_size}")
        if args.dim % TILE or args.head_dim % TILE:
            raise TTError(f"the ttnn backend needs dim and head_dim in whole tiles of {TILE}: {args.dim}, {args.head_dim}")
        self.ttnn, self.mesh, self.args = ttnn, mesh, args
        self.block_size, self.max_seq_len, self.max_batch = block_size, max_seq_len, max_batch
        self.num_blocks = num_blocks  # plus one scratch block that padding rows of page tables point at
        self.tp = tensor_parallel_degree(args, mesh.get_num_devices())
        self.heads, self.kv_heads = args.n_heads // self.tp, args.n_kv_heads // self.tp  # per chip
        self.scale = args.head_dim**-0.5
        attn_dtype, mlp_dtype, head_dtype = (getattr(ttnn, name) for name in WEIGHT_FORMATS[weight_format])

        def put(t, dtype=ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, shard=None, name=None):
            """A tensor on the mesh; a named weight goes through ttnn's cache (``ttnn.as_tensor``) when there is one."""
            mapper = ttnn.ShardTensorToMesh(mesh, dim=shard) if shard is not None else ttnn.ReplicateTensorToMesh(mesh)
            if cache is not None and name is not None:
                return ttnn.as_tensor(t.contiguous(), dtype=dtype, layout=layout, device=mesh,
                                      memory_config=ttnn.DRAM_MEMORY_CONFIG, mesh_mapper=mapper,
                                      cache_file_name=cache.file_name(name))
            return ttnn.from_torch(t.contiguous(), dtype=dtype, layout=layout, device=mesh,
                                   memory_config=ttnn.DRAM_MEMORY_CONFIG, mesh_mapper=mapper)

        split = self.tp if self.tp > 1 else None
        col, row = (-1, -2) if split else (None, None)
        norm = lambda w, name: put(w.reshape(1, 1, -1, TILE), layout=ttnn.ROW_MAJOR_LAYOUT, name=name)  # noqa: E731
        d = args.head_dim
        self.layers = []
        for i in range(args.n_layers):
            w = lambda name, i=i: weights[f"model.layers.{i}.{name}.weight"].float()  # noqa: E731
            q, k, v = w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")
            # Each chip's column shard holds its own heads: [q heads | k heads | v heads] of that chip.
            groups = [
                torch.cat([t.reshape(-1, d, args.dim).chunk(self.tp)[c].reshape(-1, args.dim) for t in (q, k, v)])
                for c in range(self.tp)
            ]
            kv = torch.zeros(num_blocks + 1, args.n_kv_heads, block_size, d)
            p = f"layers.{i}."
            self.layers.append(Layer(
                attn_norm=norm(w("input_layernorm"), p + "attn_norm"),
                wqkv=put(torch.cat(groups).T, attn_dtype, shard=col, name=p + "wqkv"),
                wo=put(w("self_attn.o_proj").T, attn_dtype, shard=row, name=p + "wo"),
                ffn_norm=norm(w("post_attention_layernorm"), p + "ffn_norm"),
                w1=put(w("mlp.gate_proj").T, mlp_dtype, shard=col, name=p + "w1"),
                w3=put(w("mlp.up_proj").T, mlp_dtype, shard=col, name=p + "w3"),
                w2=put(w("mlp.down_proj").T, mlp_dtype, shard=row, name=p + "w2"),
                k_cache=put(kv, shard=1 if split else None),
                v_cache=put(kv, shard=1 if split else None),
            ))
        embed = weights["model.embed_tokens.weight"].float()
        self.embed = put(embed, layout=ttnn.ROW_MAJOR_LAYOUT, name="embed")
        self.norm = norm(weights["model.norm.weight"].float(), "norm")
        self.lm_head = put(weights.get("lm_head.weight", embed).float().T, head_dtype, name="lm_head")
        if cache is not None:
            cache.finish()
        cos, sin = precompute_rope(args, max_seq_len)
        self.cos, self.sin = put(cos, layout=ttnn.ROW_MAJOR_LAYOUT), put(sin, layout=ttnn.ROW_MAJOR_LAYOUT)
        half = d // 2
        rotate = torch.zeros(d, d)  # x @ rotate == rotate_half(x) == cat(-x[half:], x[:half])
        rotate[torch.arange(half) + half, torch.arange(half)] = -1.0
        rotate[torch.arange(half), torch.arange(half) + half] = 1.0
        self.rotate = put(rotate)

    # ------------------------------------------------------------------ inputs

    def host(self, t: torch.Tensor, dtype, device=True):
        """A row-major input tensor (token ids, positions, page tables), replicated on the mesh."""
        ttnn = self.ttnn
        return ttnn.from_torch(t, dtype=dtype, layout=ttnn.ROW_MAJOR_LAYOUT, device=self.mesh if device else None,
                               mesh_mapper=ttnn.ReplicateTensorToMesh(self.mesh))

    def logits_to_torch(self, logits) -> torch.Tensor:
        """[1, 1, rows, vocab] on the mesh (every chip holds all of it) -> float [rows, vocab]."""
        ttnn = self.ttnn
        out = ttnn.to_torch(logits, mesh_composer=ttnn.ConcatMeshToTensor(self.mesh, dim=0))
        return out[0, 0].float()

    # ------------------------------------------------------------------ building blocks

    def rope(self, x, cos, sin):
        """x [1, heads, T, d] with cos/sin [1, 1, T, d]: x*cos + rotate_half(x)*sin."""
        ttnn = self.ttnn
        return ttnn.add(ttnn.mul(x, cos), ttnn.mul(ttnn.matmul(x, self.rotate), sin))

    def rope_tables(self, positions, T: int):
        ttnn = self.ttnn
        d = self.args.head_dim
        cos = ttnn.embedding(positions, self.cos, layout=ttnn.TILE_LAYOUT, dtype=ttnn.bfloat16)
        sin = ttnn.embedding(positions, self.sin, layout=ttnn.TILE_LAYOUT, dtype=ttnn.bfloat16)
        return ttnn.reshape(cos, (1, 1, T, d)), ttnn.reshape(sin, (1, 1, T, d))

    def qkv(self, layer: Layer, x, T: int):
        """Norm, QKV projection and the split into heads: q [1, heads, T, d], k and v [1, kv_heads, T, d]."""
        ttnn = self.ttnn
        h = ttnn.rms_norm(x, epsilon=self.args.norm_eps, weight=layer.attn_norm)
        xqkv = ttnn.linear(h, layer.wqkv, dtype=ttnn.bfloat16)
        xqkv = ttnn.reshape(xqkv, (1, T, (self.heads + 2 * self.kv_heads) * self.args.head_dim))
        return ttnn.transformer.split_query_key_value_and_split_heads(
            xqkv, num_heads=self.heads, num_kv_heads=self.kv_heads, transpose_key=False
        )

    def out_proj(self, layer: Layer, attn, x, T: int):
        """attn [1, heads, T, d] -> x + attn @ wo, summed over the chips' heads."""
        ttnn = self.ttnn
        attn = ttnn.reshape(ttnn.transformer.concatenate_heads(attn), (1, 1, T, self.heads * self.args.head_dim))
        return ttnn.add(x, self.reduce(ttnn.linear(attn, layer.wo, dtype=ttnn.bfloat16)))

    def mlp(self, layer: Layer, x):
        ttnn = self.ttnn
        h = ttnn.rms_norm(x, epsilon=self.args.norm_eps, weight=layer.ffn_norm)
        gate = ttnn.silu(ttnn.linear(h, layer.w1, dtype=ttnn.bfloat16))
        up = ttnn.linear(h, layer.w3, dtype=ttnn.bfloat16)
        return ttnn.add(x, self.reduce(ttnn.linear(ttnn.mul(gate, up), layer.w2, dtype=ttnn.bfloat16)))

    def lm(self, x):
        """Final norm and LM head, in float32: bfloat16 logits tie (0.125 apart near 20), and a tie flips greedy picks."""
        ttnn = self.ttnn
        x = ttnn.typecast(ttnn.rms_norm(x, epsilon=self.args.norm_eps, weight=self.norm), ttnn.float32)
        return ttnn.linear(x, self.lm_head, dtype=ttnn.float32)

    def reduce(self, partial):
        """Sum a row-parallel projection's partial results across the chips: along the mesh's one row
        (1×N, as every runner opens a lease, ``kernels/mesh.py``), over the 1-D fabric it was opened with."""
        ttnn = self.ttnn
        if self.tp == 1:
            return partial
        return ttnn.all_reduce(partial, cluster_axis=1, topology=ttnn.Topology.Linear)

    def embed_tokens(self, ids, T: int):
        ttnn = self.ttnn
        x = ttnn.embedding(ids, self.embed, layout=ttnn.TILE_LAYOUT, dtype=ttnn.bfloat16)
        return ttnn.reshape(x, (1, 1, T, self.args.dim))

    # ------------------------------------------------------------------ forward passes

    def prefill(self, tokens: list[int], start: int, page_row: torch.Tensor) -> torch.Tensor:
        """Read ``tokens`` of one sequence at positions ``start...`` (``start`` a whole number of blocks);
        ``page_row`` is its page table row. Returns the float logits of the last token [vocab]."""
        ttnn = self.ttnn
        bs, n = self.block_size, len(tokens)
        if start % bs:
            raise ValueError(f"a prefill chunk must start on a block boundary ({bs} tokens), not at {start}")
        T = -(-n // bs) * bs  # padded to whole blocks (and so whole tiles); padding is never attended
        ids = torch.zeros(1, T, dtype=torch.int32)
        ids[0, :n] = torch.tensor(tokens, dtype=torch.int32)
        positions = torch.arange(start, start + T, dtype=torch.int32).clamp(max=self.max_seq_len - 1)[None]
        x = self.embed_tokens(self.host(ids, ttnn.uint32), T)
        cos, sin = self.rope_tables(self.host(positions, ttnn.uint32), T)
        chunk_table = self.host(page_row[start // bs : (start + T) // bs][None].to(torch.int32), ttnn.int32)
        full_table = self.host(page_row[None].to(torch.int32), ttnn.int32) if start else None
        for layer in self.layers:
            q, k, v = self.qkv(layer, x, T)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            ttnn.experimental.paged_fill_cache(layer.k_cache, k, chunk_table, batch_idx=0)
            ttnn.experimental.paged_fill_cache(layer.v_cache, v, chunk_table, batch_idx=0)
            if start == 0:
                attn = ttnn.transformer.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            else:  # the chunk's queries attend to the cached prefix and to themselves, causally
                attn = ttnn.transformer.chunked_scaled_dot_product_attention(
                    q, layer.k_cache, layer.v_cache, full_table, start, scale=self.scale
                )
            x = self.mlp(layer, self.out_proj(layer, attn, x, T))
        last = (n - 1) // TILE * TILE  # only the tile holding the last token goes through the LM head
        x = ttnn.slice(x, (0, 0, last, 0), (1, 1, last + TILE, self.args.dim))
        return self.logits_to_torch(self.lm(x))[n - 1 - last]

    def decode(self, ids, rope_pos, cur_pos, page_table):
        """One token for each of ``max_batch`` users (device tensors: ids and rope_pos [1, B] uint32,
        cur_pos [B] int32 with -1 for unused rows, page_table [B, blocks] int32). Returns logits [1, 1, B, vocab]
        on the device (so that a trace can own them)."""
        ttnn = self.ttnn
        B = self.max_batch
        x = self.embed_tokens(ids, B)
        cos, sin = self.rope_tables(rope_pos, B)
        for layer in self.layers:
            q, k, v = self.qkv(layer, x, B)  # a batch of users is a "sequence" of B rows here
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            q, k, v = (ttnn.permute(t, (0, 2, 1, 3)) for t in (q, k, v))  # [1, B, heads, d]: a user per row
            ttnn.experimental.paged_update_cache(layer.k_cache, k, update_idxs_tensor=cur_pos, page_table=page_table)
            ttnn.experimental.paged_update_cache(layer.v_cache, v, update_idxs_tensor=cur_pos, page_table=page_table)
            attn = ttnn.transformer.paged_scaled_dot_product_attention_decode(
                q, layer.k_cache, layer.v_cache, page_table, cur_pos_tensor=cur_pos, scale=self.scale
            )
            x = self.mlp(layer, self.out_proj(layer, ttnn.permute(attn, (0, 2, 1, 3)), x, B))
        return self.lm(x)
