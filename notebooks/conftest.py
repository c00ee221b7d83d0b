"""nbval runs these notebooks (`make test`: pytest --nbval notebooks) on a simulated host.

Each notebook names its kernel (`tt-n300`: one n300 card); this installs that kernelspec in a
temporary Jupyter data folder. Unless JUPYTER_TT_INVENTORY says otherwise (on a card host:
JUPYTER_TT_INVENTORY=sysfs), the notebooks run on a simulated inventory with a scheduler state of
their own.
There, leases are accounted to the user "workshop" (JUPYTERHUB_USER), so that stored outputs name no real user.
`jupyter` must be on PATH for the notebooks' `!jupyter tt ...` cells (`make test` sees to it).
"""

import os
import tempfile


def pytest_configure(config):
    if not config.getoption("nbval", default=False) and not config.getoption("nbval_lax", default=False):
        return
    home = tempfile.mkdtemp(prefix="jupyter-tt-notebooks-")
    if "JUPYTER_TT_INVENTORY" not in os.environ:
        # A simulated host of our own. On a real host (JUPYTER_TT_INVENTORY set) the host's scheduler
        # state is kept, so that the notebooks' kernels queue with everyone else's.
        os.environ["JUPYTER_TT_INVENTORY"] = "simulated:n300x4"
        os.environ["JUPYTER_TT_STATE_DIR"] = os.path.join(home, "state")
        os.environ.setdefault("JUPYTERHUB_USER", "workshop")  # whom leases are for, as on a JupyterHub
    os.environ["JUPYTER_DATA_DIR"] = os.path.join(home, "data")
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(home, "runtime")
    from jupyter_tt.kernels.kernelspec import install

    install("tt-n300", 1, "n300", user=True)
