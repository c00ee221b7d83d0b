"""The ttnn backend's converted weights, kept between starts (as tt_transformers keeps its own).

Converting a checkpoint to tiled, block-float device tensors is the slow part of a start on a card
(tt-inference-server issue #4077: 21 minutes a start for one model before its cache). So each
weight goes through ``ttnn.as_tensor(..., cache_file_name=...)``, ttnn's own cache (its
``.tensorbin`` files, as tt_transformers writes them), in one folder of the user's cache per

- the checkpoint's contents (sha256 of its files, remembered by path, size, time and inode),
- the ttnn version (its file format), the mesh shape, the weight format and the tensor-parallel degree,
- ``FORMAT``, the version of ``TtnnLlama``'s own conversion (head grouping, transposes).

A changed checkpoint or ttnn is another folder, so a stale entry is never loaded. A first start
writes into a private folder and renames it into place when every weight is in, so a start that
dies half way leaves nothing another start could load.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
from pathlib import Path

from ....caches import CacheKind, Caches, Hold, key_of

#: The version of TtnnLlama's conversion: change it when the tensors it makes from a checkpoint change.
FORMAT = 1


def ttnn_version(ttnn) -> str:
    """The installed ttnn's version (the wheel's metadata: the module itself has no ``__version__``)."""
    version = getattr(ttnn, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("ttnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class WeightCache:
    """Where ``TtnnLlama`` finds (``hit``) or writes its converted tensors for one checkpoint and mesh."""

    def __init__(self, caches: Caches, digest: str, *, ttnn_version: str, mesh_shape: tuple[int, int],
                 weight_format: str, tp: int):
        about = {"checkpoint_sha256": digest, "ttnn": ttnn_version, "mesh_shape": list(mesh_shape),
                 "weights": weight_format, "tensor_parallel": tp, "format": FORMAT}
        key = key_of(digest, ttnn_version, tuple(mesh_shape), weight_format, tp, FORMAT)
        self.entry, self._hold = caches.use(CacheKind.TTNN_WEIGHTS, key, about)
        self.tensors = self.entry / "tensors"
        self.hit = (self.tensors / "complete").exists()
        self._building = None if self.hit else self._fresh_dir(self.entry / f".building-{os.getpid()}")
        #: tensors loaded from the cache and converted into it, in this start
        self.loaded = self.converted = 0

    @staticmethod
    def _fresh_dir(path: Path) -> Path:
        """A new folder to build in; the folders of builders that died meanwhile go."""
        for old in path.parent.glob(".building-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if old == path or not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                shutil.rmtree(old, ignore_errors=True)
        path.mkdir(mode=0o700)
        return path

    def file_name(self, name: str) -> str:
        """``cache_file_name`` for the tensor ``name`` (ttnn adds its dtype, layout and ``.tensorbin``)."""
        folder = self.tensors if self.hit else self._building
        assert folder is not None
        if self.hit:
            self.loaded += 1
        else:
            self.converted += 1
        return str(folder / name)

    def finish(self) -> None:
        """Every weight is in: publish a first start's folder (another start may have published first)."""
        if self._building is None:
            return
        (self._building / "complete").touch()
        try:
            os.rename(self._building, self.tensors)
        except OSError:  # another process published the same conversion first: theirs is as good
            shutil.rmtree(self._building, ignore_errors=True)
        self._building = None

    def close(self) -> None:
        """Let go of the entry (an unfinished first start's folder is removed)."""
        if self._building is not None:
            shutil.rmtree(self._building, ignore_errors=True)
            self._building = None
        with contextlib.suppress(Exception):
            self._hold.close()

    @property
    def hold(self) -> Hold:
        return self._hold
