"""The real ttnn module, wrapped so that a test sees the order of the calls that open and close a mesh.

Each recorded call is checked against the installed wheel's own signature before it is made, and
then made on the real ttnn (in mock cluster mode where no card exists): ``set_fabric_config`` really
sets the fabric, and ``open_mesh_device`` really tries to open the mesh, which here fails as it
would on a host without the SFPI compiler. With ``opens=True`` the open alone is answered by a
stand-in mesh (labelled as such), for the path after a successful open, which needs a card.
"""

from __future__ import annotations

import ttnn
from test_api_conformance import parameters

RECORDED = ("set_fabric_config", "open_mesh_device", "close_mesh_device")


class StandInMesh:
    """Stands in for a MeshDevice that opened (no card here)."""

    def __init__(self, shape):
        self.shape = shape

    def get_num_devices(self) -> int:
        return self.shape[0] * self.shape[1]

    def get_submeshes(self) -> list:
        return []


class RecordingTTNN:
    def __init__(self, opens: bool = False):
        self.opens = opens
        self.calls: list[dict] = []

    def __getattr__(self, name: str):
        real = getattr(ttnn, name)
        if name not in RECORDED:
            return real

        def call(*args, **kwargs):
            overloads = parameters(real) or []
            assert any(set(kwargs) <= set(p) and len(args) <= len(p) for p in overloads), (name, args, kwargs, overloads)
            self.calls.append({"call": name, "args": [_name(a) for a in args], "kwargs": sorted(kwargs),
                               "fabric_before": ttnn.get_fabric_config().name})
            if name == "open_mesh_device" and self.opens:
                return StandInMesh(args[0].shape)
            if name == "close_mesh_device" and isinstance(args[0], StandInMesh):
                return None
            return real(*[a.real if isinstance(a, _Shape) else a for a in args], **kwargs)

        return call

    def MeshShape(self, rows, cols):  # noqa: N802 (ttnn's name)
        return _Shape(ttnn.MeshShape(rows, cols), (rows, cols))


class _Shape:
    """A real ttnn.MeshShape that also says its rows and columns to the recorder."""

    def __init__(self, real, shape):
        self.real, self.shape = real, shape


def _name(value) -> str:
    if isinstance(value, _Shape):
        return f"MeshShape{value.shape}"
    return getattr(value, "name", None) or type(value).__name__
