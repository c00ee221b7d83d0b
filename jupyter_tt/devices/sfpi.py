"""SFPI, the RISC-V compiler ttnn builds its device kernels with, found where ttnn looks for it.

ttnn compiles kernels for the card's cores the first time it opens a device, with SFPI's
``riscv-tt-elf-g++``. The PyPI wheel does not ship SFPI (its ``runtime/`` holds only ``hw``), and
pins the release in ``tt_metal/sfpi-version``. tt-metal's JIT build
(``tt_metal/jit_build/build.cpp``) looks in ``<root>/runtime/sfpi``, then ``/opt/tenstorrent/sfpi``;
``root`` is ``TT_METAL_RUNTIME_ROOT`` or, for an installed wheel, the ttnn package itself. Without
it the first device open fails deep inside ttnn with "sfpi not found at ... or ...". This module
finds it the same way, so that ``jupyter tt doctor``, ``--backend ttnn`` and ``open_mesh_device()``
say so before they start, with the release to install.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SYSTEM_SFPI = "/opt/tenstorrent/sfpi"
#: The compiler's name in SFPI releases (older ones called it riscv32-tt-elf-g++).
COMPILERS = ("riscv-tt-elf-g++", "riscv32-tt-elf-g++")
RELEASES = "https://github.com/tenstorrent/sfpi/releases"


@dataclass(frozen=True)
class Sfpi:
    """Where ttnn looks for SFPI, what it found, and the release it pins."""

    roots: tuple[str, ...]  # in ttnn's order
    found: str | None  # the root ttnn would use
    version: str | None  # the found release's sfpi.version
    pinned: str | None  # ttnn's tt_metal/sfpi-version

    @property
    def problem(self) -> str | None:
        """None when ttnn will find the SFPI it pins, else what is wrong (``fix`` says what to install)."""
        if self.found is None:
            return (f"sfpi not found at {' or '.join(self.roots)} (ttnn compiles its device kernels with SFPI, "
                    "and its wheel does not include it)")
        if self.pinned and self.version and self.version != self.pinned:
            return f"SFPI {self.version} at {self.found}, but this ttnn pins {self.pinned}"
        return None

    @property
    def fix(self) -> str:
        release = f"SFPI {self.pinned}" if self.pinned else "the SFPI release this ttnn pins (tt_metal/sfpi-version)"
        return f"install {release} from {RELEASES}: its Debian package installs to {SYSTEM_SFPI}"

    @property
    def error(self) -> str | None:
        """The problem and its fix in one message (for an exception), or None."""
        return f"{self.problem}: {self.fix}" if self.problem else None

    @property
    def summary(self) -> str:
        version = f" {self.version}" if self.version else ""
        pinned = f"; ttnn pins {self.pinned}" if self.pinned else ""
        return f"SFPI{version} at {self.found}{pinned}" if self.found else f"no SFPI{pinned}"


def pinned_version(ttnn_dir: str | Path) -> str | None:
    """The SFPI release a ttnn package pins (``sfpi_version='7.89.0'`` in ``tt_metal/sfpi-version``)."""
    try:
        text = (Path(ttnn_dir) / "tt_metal/sfpi-version").read_text()
    except OSError:
        return None
    match = re.search(r"^sfpi_version=['\"]?([^'\"\s]+)", text, re.M)
    return match[1] if match else None


def find_sfpi(ttnn_dir: str | Path, runtime_root: str | None = None, system_root: str | Path = "/") -> Sfpi:
    """SFPI as ttnn at ``ttnn_dir`` finds it. ``runtime_root``: ``TT_METAL_RUNTIME_ROOT`` where set;
    ``system_root``: where ``/opt`` is (a test's fixture tree)."""
    root = Path(runtime_root or ttnn_dir)
    system = Path(system_root) / SYSTEM_SFPI.lstrip("/")
    roots = (str(root / "runtime/sfpi"), str(system))
    for candidate in roots:
        if any((Path(candidate) / "compiler/bin" / name).exists() for name in COMPILERS):
            try:
                version = (Path(candidate) / "sfpi.version").read_text().strip() or None
            except OSError:
                version = None
            return Sfpi(roots=roots, found=candidate, version=version, pinned=pinned_version(ttnn_dir))
    return Sfpi(roots=roots, found=None, version=None, pinned=pinned_version(ttnn_dir))


def installed_ttnn_sfpi(system_root: str | Path = "/") -> Sfpi | None:
    """SFPI for the ttnn this Python would import (None without ttnn), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("ttnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return find_sfpi(list(spec.submodule_search_locations)[0], os.environ.get("TT_METAL_RUNTIME_ROOT"), system_root)
