"""jupyter-tt: Tenstorrent Wormhole devices for Jupyter kernels.

In a notebook: ``jupyter_tt.lease()`` shows the devices this kernel holds and
``jupyter_tt.open_mesh_device()`` opens them with ttnn.
"""

from ._version import __version__
from .errors import ConfigError, LeaseError, RequestError, TTError, WaitTimeout
from .kernels.current import close_mesh_device, lease, open_mesh_device


def serve(*args, **kwargs):
    """Serve a model from this kernel (see ``jupyter_tt.serving.notebook.serve``); returns an ``LLM``."""
    from .serving.notebook import serve as _serve

    return _serve(*args, **kwargs)

def __getattr__(name):
    if name == "BenchmarkWidget":  # imported on first use: it pulls in ipywidgets and the benchmark client
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
