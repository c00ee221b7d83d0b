"""jupyter-tt: Tenstorrent Wormhole devices for Jupyter kernels.

In a notebook: ``jupyter_tt.lease()`` shows the devices this kernel holds and
``jupyter_tt.open_mesh_device()`` opens them with ttnn.
"""

from ._version import __version__
from .errors import ConfigError, LeaseError, RequestError, TTError, WaitTimeout
from .kernels.current import close_mesh_device, lease, open_mesh_device


def __getattr__(name):
    # Imported on first use (the server extension and the CLI import this package too): the objects
    # themselves, so that Shift-Tab in a notebook shows their own signature and docstring.
    if name == "serve":  # the serving client: httpx, the engines' launch rules
        from .serving.notebook import serve

        return serve
    if name == "check":  # the readiness check on this kernel's lease (imports ttnn when it runs)
        from .check import check

        return check
    if name == "BenchmarkWidget":  # ipywidgets and the benchmark client
        from .bench.widget import BenchmarkWidget

        return BenchmarkWidget
    raise AttributeError(f"module 'jupyter_tt' has no attribute {name!r}")


__all__ = [
    "BenchmarkWidget",
    "ConfigError",
    "LeaseError",
    "RequestError",
    "TTError",
    "WaitTimeout",
    "__version__",
    "check",
    "close_mesh_device",
    "lease",
    "open_mesh_device",
    "serve",
]


def _jupyter_server_extension_points():
    from .server.app import JupyterTTApp

    return [{"module": "jupyter_tt.server.app", "app": JupyterTTApp}]


def _jupyter_labextension_paths():
    """For `jupyter labextension develop`: the built JupyterLab extension (labextension/ builds it here)."""
    return [{"src": "labextension", "dest": "jupyter-tt"}]
