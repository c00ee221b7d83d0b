"""ttnn on the CPU through ttnn's own golden functions: the stand-in for a Wormhole card.

``GoldenTTNN`` looks like the ``ttnn`` module to the ttnn backend (``backends/ttnn/model.py``), but every op
call runs ``ttnn.get_golden_function(op)`` (ttnn's torch reference for that op) instead of a device
kernel, on one torch tensor per device of a ``GoldenMesh``. Everything that is not an op (dtypes,
layouts, memory configs) is the real ttnn's. Tensors are created by ttnn's golden ``from_torch``,
which round-trips bfloat8_b through ttnn's own host packing, so block-float quantization is real.

A few ops have no golden function in ttnn; for those alone ``EQUIVALENTS`` holds torch code written
from the op's documentation (listed in docs/user/serving.md). Collectives (``all_reduce``) run their goldens
on the per-device tensors, as ttnn's own golden mode does. Device-only calls (trace capture) are
not emulated: the backend does not trace when it runs here.

Every call is recorded in ``calls`` (op name, how it ran) so that tests can list what was covered.
Needs the real ``ttnn`` package; bfloat8_b packing needs a cluster descriptor, so set
``TT_METAL_MOCK_CLUSTER_DESC_PATH`` (ttnn's mock cluster mode) where no card exists.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GoldenMesh:
    """Stands in for a ``ttnn.MeshDevice`` of ``shape`` chips."""

    shape: tuple[int, int] = (1, 1)

    def get_num_devices(self) -> int:
        return self.shape[0] * self.shape[1]

    def get_submeshes(self) -> list:
        return []


class Shards:
    """A tensor on a golden mesh: one torch tensor per device (the same object where replicated)."""

    def __init__(self, parts: list, dims: tuple = (None, None)):
        self.parts = parts
        self.dims = dims  # the shard dim along each mesh axis, None where replicated (for collectives)

    @property
    def shape(self):
        return self.parts[0].shape


@dataclass(frozen=True)
class _Mapper:
    kind: str  # "replicate", "shard" or "concat"
    dim: int | None = None


# ----------------------------------------------------------------------------- ops without a golden


def paged_fill_cache(cache, input_tensor, page_table, *, batch_idx=0, **_):
    """ttnn.experimental.paged_fill_cache: cache [blocks, heads, block_size, d] takes input [1, heads, S, d]
    at positions 0..S-1 of the sequence whose block table is ``page_table[batch_idx]``."""
    _, _, block_size, _ = cache.shape
    seq = input_tensor.shape[-2]
    blocks = page_table[batch_idx].long()
    for first in range(0, seq, block_size):
        rows = input_tensor[0, :, first : first + block_size]
        cache[int(blocks[first // block_size]), :, : rows.shape[1]] = rows.to(cache.dtype)
    return cache


def paged_update_cache(cache, input_tensor, *, update_idxs_tensor=None, update_idxs=(), page_table=None, **_):
    """ttnn.experimental.paged_update_cache: input [1, B, heads, d] holds each user's new K or V row; user b's
    goes to position ``update_idxs[b]`` of its block table ``page_table[b]``; a negative position skips the user."""
    _, _, block_size, _ = cache.shape
    positions = (update_idxs_tensor.reshape(-1).tolist() if update_idxs_tensor is not None else list(update_idxs))
    for b, pos in enumerate(positions):
        if pos < 0:
            continue
        block = int(page_table[b, pos // block_size]) if page_table is not None else b
        cache[block, :, pos % block_size] = input_tensor[0, b].to(cache.dtype)
    return cache


EQUIVALENTS = {
    "experimental.paged_fill_cache": paged_fill_cache,
    "experimental.paged_update_cache": paged_update_cache,
}
COLLECTIVES = {"all_reduce", "all_gather", "reduce_scatter"}
NAMESPACES = {"transformer", "experimental"}


class GoldenTTNN:
    """The ``ttnn`` module as the backend sees it, with each op run by its golden function."""

    def __init__(self, _real=None, _prefix: str = "", _calls=None):
        import ttnn

        self._real = _real if _real is not None else ttnn
        self._prefix = _prefix
        self.calls = _calls if _calls is not None else collections.Counter()
        self.fabric = "DISABLED"

    def __getattr__(self, name: str):
        qualified = self._prefix + name
        if qualified in NAMESPACES:
            return GoldenTTNN(getattr(self._real, name), qualified + ".", self.calls)
        if qualified in EQUIVALENTS:
            return self._op(qualified, EQUIVALENTS[qualified], "torch equivalent")
        special = getattr(type(self), "host_" + qualified.replace(".", "_"), None)
        if special is not None:
            return special.__get__(self)
        real = getattr(self._real, name)
        if not hasattr(real, "golden_function"):
            return real  # dtypes, layouts, memory configs, program configs...
        if real.golden_function is None:
            raise NotImplementedError(
                f"ttnn.{qualified} has no golden function and no torch equivalent in jupyter_tt.serving.backends.ttnn.golden"
            )
        if name in COLLECTIVES:
            return self._collective(qualified, real.golden_function)
        return self._op(qualified, real.golden_function, "golden")

    def _op(self, qualified, function, how):
        def call(*args, **kwargs):
            self.calls[(qualified, how)] += 1
            mesh = next((a for a in [*args, *kwargs.values()] if isinstance(a, Shards)), None)
            if mesh is None:
                return function(*args, **kwargs)
            n = len(mesh.parts)
            pick = lambda a, i: a.parts[i] if isinstance(a, Shards) else a  # noqa: E731
            outs = [function(*[pick(a, i) for a in args], **{k: pick(v, i) for k, v in kwargs.items()}) for i in range(n)]
            if isinstance(outs[0], tuple):
                return tuple(Shards([o[j] for o in outs], mesh.dims) for j in range(len(outs[0])))
            return Shards(outs, mesh.dims)

        return call

    def _collective(self, qualified, golden):
        def call(input_tensor, *args, **kwargs):
            self.calls[(qualified, "golden")] += 1
            n = len(input_tensor.parts)
            out = golden(list(input_tensor.parts), *args, _ttnn_golden_mesh_shape=(1, n), _ttnn_golden_mesh_shard_dims=input_tensor.dims, **kwargs)
            return Shards([out] * n)  # the golden composes one tensor that every device now holds

        return call

    # --------------------------------------------------------------- host, mesh and tensor movement

    def host_open_mesh_device(self, mesh_shape=(1, 1), **_):
        return GoldenMesh(tuple(mesh_shape))

    def host_set_fabric_config(self, config, *args, **kwargs):
        """Recorded, not run: the stand-in has no fabric (``fabric`` says what the last call asked for)."""
        self.calls[("set_fabric_config", "recorded")] += 1
        self.fabric = config.name

    def host_close_mesh_device(self, mesh):
        pass

    def host_MeshShape(self, rows, cols):
        return (rows, cols)

    def host_ReplicateTensorToMesh(self, mesh):
        return _Mapper("replicate")

    def host_ShardTensorToMesh(self, mesh, dim):
        return _Mapper("shard", dim)

    def host_ConcatMeshToTensor(self, mesh, dim):
        return _Mapper("concat", dim)

    def host_from_torch(self, tensor, dtype=None, *, layout=None, device=None, mesh_mapper=None, **kwargs):
        self.calls[("from_torch", "golden")] += 1
        value = self._real.get_golden_function(self._real.from_torch)(tensor, dtype, layout=layout)
        if value is tensor:
            value = tensor.clone()
        return self._placed(value, dtype, layout, device, mesh_mapper)

    def host_as_tensor(self, tensor, dtype=None, *, layout=None, device=None, mesh_mapper=None, cache_file_name=None,
                       **kwargs):
        """The real ``ttnn.as_tensor`` on the host, whole (its cache files, written and read by ttnn), then
        placed on the golden mesh as ``from_torch`` places it."""
        self.calls[("as_tensor", "ttnn on the host")] += 1
        real = self._real
        host = real.as_tensor(tensor, dtype, layout=layout, cache_file_name=cache_file_name)
        return self._placed(real.to_torch(host), dtype, layout, device, mesh_mapper)

    def _placed(self, value, dtype, layout, device, mesh_mapper) -> Shards:
        if dtype in (self._real.bfloat8_b, self._real.bfloat4_b):
            value = value.to(torch.bfloat16)  # lossless: a block float's values have at most 8 significant bits
        if value.ndim == 2 and value.is_floating_point() and layout == self._real.TILE_LAYOUT:
            value = value.T.contiguous().T  # same values, stored column-major: torch's fast bf16 GEMM path on CPUs
        n = device.get_num_devices() if device is not None else 1
        if mesh_mapper is not None and mesh_mapper.kind == "shard":
            return Shards(list(value.chunk(n, dim=mesh_mapper.dim)), (None, mesh_mapper.dim))
        return Shards([value] * n if n == 1 else [value.clone() for _ in range(n)])

    def host_to_torch(self, tensor, dtype=None, *, mesh_composer=None, **kwargs):
        self.calls[("to_torch", "golden")] += 1
        value = torch.cat(tensor.parts, dim=mesh_composer.dim) if mesh_composer is not None else tensor.parts[0]
        return self._real.get_golden_function(self._real.to_torch)(value, dtype)

    def host_copy_host_to_device_tensor(self, host_tensor, device_tensor, cq_id=None):
        self.calls[("copy_host_to_device_tensor", "golden")] += 1
        for i, dst in enumerate(device_tensor.parts):
            dst.copy_(host_tensor.parts[i % len(host_tensor.parts)])
