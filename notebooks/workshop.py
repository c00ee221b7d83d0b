"""The workshop notebooks' host: a simulated one, set up the same way for nbval and for storing them.

`make test-notebooks` runs the notebooks with nbval on this host (conftest.py calls ``setup()``) and
compares their outputs with the stored ones. After changing a notebook, store it run top to bottom
here, so that the outputs nbval compares with are the ones this host gives:

    make store-notebooks                                         # all of them
    .venv/bin/python notebooks/workshop.py notebooks/02-serve-and-chat.ipynb

Unless JUPYTER_TT_INVENTORY says otherwise (on a card host: JUPYTER_TT_INVENTORY=sysfs), the host
is a simulated inventory with a scheduler state of its own, and leases are accounted to the user
"workshop" (JUPYTERHUB_USER), so that stored outputs name no real user.
"""

import os
import sys
import tempfile
from pathlib import Path


def setup() -> None:
    """Point this process (and the kernels it starts) at the workshop host, and install the kernelspec
    the notebooks name (`tt-n300`: one n300 card) in a temporary Jupyter data folder."""
    home = tempfile.mkdtemp(prefix="jupyter-tt-notebooks-")
    if "JUPYTER_TT_INVENTORY" not in os.environ:
        # A simulated host of our own. On a real host (JUPYTER_TT_INVENTORY set) the host's scheduler
        # state is kept, so that the notebooks' kernels queue with everyone else's.
        os.environ["JUPYTER_TT_INVENTORY"] = "simulated:n300x4"
        os.environ["JUPYTER_TT_STATE_DIR"] = os.path.join(home, "state")
        os.environ.setdefault("JUPYTERHUB_USER", "workshop")  # whom leases are for, as on a JupyterHub
    os.environ["JUPYTER_DATA_DIR"] = os.path.join(home, "data")
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(home, "runtime")
    # The notebooks' `!jupyter tt ...` cells need this environment's jupyter.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    from jupyter_tt.kernels.kernelspec import install

    install("tt-n300", 1, "n300", user=True)


def store(path: Path) -> None:
    """Run one notebook top to bottom in its own folder and save it with its outputs (no widget state
    and no timestamps: they change on every run)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, store_widget_state=False, record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run: noise in every diff
        for output in cell.get("outputs", []):
            stored_widget_as_a_note(output)
    nbformat.write(notebook, path)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def stored_widget_as_a_note(output) -> None:
    """A widget's output, stored without its state, would open as its repr (``BenchmarkWidget(children=(HBox(...``):
    it is stored as a line that says what the cell shows once it runs. Its cells are NBVAL_IGNORE_OUTPUT."""
    data = output.get("data", {})
    if WIDGET_VIEW in data:
        text = data.get("text/plain", "a widget")
        name = ("".join(text) if isinstance(text, list) else text).split("(", 1)[0]
        output["data"] = {"text/plain": f"[{name}: run this cell to show it]"}


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parent.glob("*.ipynb"))
    setup()
    for p in paths:
        print(f"running {p} ...", flush=True)
        store(p)
