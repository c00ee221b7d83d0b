"""Every ttnn name our code uses exists in the pinned ttnn wheel, and every keyword we pass is one
its function takes. Read from our source (so the paths that only run on a card are checked too)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import ttnn

import jupyter_tt
from jupyter_tt.kernels import mesh
from jupyter_tt.serving.backends.ttnn import model as ttnn_model

ROOT = Path(jupyter_tt.__file__).parent
SOURCES = ["serving/backends/ttnn/model.py", "serving/backends/ttnn/runner.py", "kernels/current.py", "kernels/mesh.py",
           "serving/backends/ttnn/tt_transformers.py", "check.py"]


def dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "ttnn":
        return ".".join(reversed(parts)) or None
    return None


def uses(path: Path) -> dict[str, list[tuple[int, set[str], int]]]:
    """ttnn name -> [(line, keywords, positional args)] for each call (no keywords for a bare reference)."""
    found: dict[str, list] = {}
    tree = ast.parse(path.read_text())
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := dotted(node.func)):
            called.add(id(node.func))
            kw = {k.arg for k in node.keywords if k.arg}
            found.setdefault(name, []).append((node.lineno, kw, len(node.args)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in called and (name := dotted(node)):
            if not any(n.startswith(name + ".") for n in found):  # a prefix of a longer name: checked with it
                found.setdefault(name, []).append((node.lineno, set(), 0))
    return found


def resolve(name: str):
    obj = ttnn
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def parameters(obj) -> list[list[str]] | None:
    """Parameter names of each overload (without self); None where they cannot be read."""
    fn = getattr(obj, "function", obj)  # a FastOperation wraps the bound C++ operation
    sig = getattr(fn, "__nb_signature__", None) or getattr(type(fn).__call__, "__nb_signature__", None)
    if sig:
        return [[p for p in re.findall(r"[(,]\s*(\w+)\s*:", s[0]) if p != "self"] for s in sig]
    try:
        return [list(inspect.signature(fn).parameters)]
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize("source", SOURCES)
def test_every_ttnn_name_and_keyword_we_use_exists(source, report):
    problems, checked = [], 0
    for name, sites in sorted(uses(ROOT / source).items()):
        try:
            obj = resolve(name)
        except AttributeError:
            problems.append(f"{source}: ttnn.{name} does not exist (line {sites[0][0]})")
            continue
        overloads = parameters(obj) if callable(obj) else None
        for line, keywords, positional in sites:
            if overloads is None or not keywords and not positional:
                continue
            if not any(keywords <= set(params) and positional <= len(params) for params in overloads):
                problems.append(f"{source}:{line}: ttnn.{name}(<{positional} args>, {sorted(keywords)}) fits no overload {overloads}")
            checked += 1
    report(f"API conformance: {source}: {checked} ttnn calls, every name and keyword found in the installed ttnn")
    assert not problems, "\n".join(problems)


def test_the_mesh_options_and_mesh_methods_we_use_exist():
    params = inspect.signature(ttnn.open_mesh_device).parameters
    assert set(ttnn_model.MESH_OPTIONS) <= set(params)
    assert hasattr(ttnn.MeshDevice, "get_num_devices")
    for formats in ttnn_model.WEIGHT_FORMATS.values():  # looked up by name at run time
        assert all(isinstance(getattr(ttnn, name), ttnn.DataType) for name in formats)
    # kernels/mesh.py looks the fabric up by name, and closes submeshes first, as tt-metal's conftest does.
    assert isinstance(getattr(ttnn.FabricConfig, mesh.FABRIC_1D), ttnn.FabricConfig)
    assert hasattr(ttnn.MeshDevice, "get_submeshes") and hasattr(ttnn.MeshDevice, "shape")
    assert {"cache_file_name", "mesh_mapper", "memory_config", "device"} <= set(inspect.signature(
        ttnn.as_tensor.function if hasattr(ttnn.as_tensor, "function") else ttnn.as_tensor).parameters)


def test_the_checker_catches_a_wrong_keyword(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ttnn\nttnn.linear(a, b, transpose_c=True)\nttnn.no_such_op(a)\n")
    found = uses(bad)
    assert found["linear"][0][1] == {"transpose_c"}
    overloads = parameters(resolve("linear"))
    assert not any({"transpose_c"} <= set(p) for p in overloads) and any({"transpose_b"} <= set(p) for p in overloads)
    with pytest.raises(AttributeError):
        resolve("no_such_op")
