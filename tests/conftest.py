import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sysfs_tree import make_host  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's Jupyter config, kernelspecs or the system state dir."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime")]:
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("JUPYTER_TT_STATE_DIR", str(home / "tt-state"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for var in ("JUPYTER_TT_INVENTORY", "JUPYTER_TT_SYSFS_ROOT", "JUPYTER_TT_LEASE", "TT_VISIBLE_DEVICES", "JUPYTERHUB_USER"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def state_dir():
    return os.environ["JUPYTER_TT_STATE_DIR"]


@pytest.fixture
def host(tmp_path):
    """``host("loudbox")`` → a SysfsTree under a temp root."""

    def make(kind="n300"):
        return make_host(tmp_path / "root", kind)

    return make
