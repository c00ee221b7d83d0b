import os

import pytest

from tests.support.fake_docker import docker  # noqa: F401 (a fixture for every test module)
from tests.support.fake_tt_smi import card_host  # noqa: F401 (a fixture for every test module)
from tests.support.hang_stacks import pytest_runtest_protocol  # noqa: F401 (stacks of the test's processes before a timeout)
from tests.support.sysfs_tree import make_host


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's Jupyter config, kernelspecs or the system state dir."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime")]:
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("JUPYTER_TT_STATE_DIR", str(home / "tt-state"))
    monkeypatch.setenv("JUPYTER_TT_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for var in ("JUPYTER_TT_INVENTORY", "JUPYTER_TT_SYSFS_ROOT", "JUPYTER_TT_LEASE", "TT_VISIBLE_DEVICES", "JUPYTER_TT_VISIBLE_DEVICES",
                "JUPYTERHUB_USER", "JUPYTER_TT_CACHE_LIMIT_GB", "TT_METAL_CACHE", "TT_CACHE_PATH", "HF_MODEL",
                "JUPYTER_TT_SERVE_TIMEOUT"):
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


@pytest.fixture
def kernelspecs():
    """Kernelspecs in the test's own Jupyter data dir, as `jupyter tt kernelspec install --user` writes them."""
    from jupyter_tt.kernels.kernelspec import install

    install("tt-n150", 1, "n150", user=True)
    install("tt-n300", 1, "n300", user=True)
    install("tt-loudbox", 4, "n300", user=True)
    # Its own display name: JupyterLab's launcher must not offer it as tt-n300 (its 1 s wait is for the queue tests).
    install("tt-n300-quick", 1, "n300", wait_timeout=1.0, display_name="Python 3 (1× n300, waits 1 s)", user=True)
    install("tt-n150-quick", 1, "n150", wait_timeout=1.0, display_name="Python 3 (1× n150, waits 1 s)", user=True)
    install("tt-none", 0, "any", user=True)
    install("tenstorrent", 0, "any", display_name="Tenstorrent (choose devices in the notebook)", user=True)


@pytest.fixture
def kernels(monkeypatch, kernelspecs):
    """``kernels("tt-n300", **start_kwargs)`` starts a real kernel on a simulated LoudBox; all stop at the end."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    started = []

    def start(name, **kw):
        km, client = start_new_kernel(kernel_name=name, **kw)
        started.append((km, client))
        return km, client

    yield start
    for km, client in started:
        client.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
def servers(tmp_path):
    """``servers(inventory=..., user=..., args=[...])`` starts a real Jupyter server; all stop at the end."""
    from tests.support.jupyter_servers import Server

    started = []

    def start(inventory="simulated:n300x4", user=None, args=(), env=None, name=None):
        name = name or f"server{len(started)}"
        extra = {"JUPYTER_TT_INVENTORY": inventory, **(env or {})}
        if user:
            extra["JUPYTERHUB_USER"] = user
        server = Server(tmp_path / name, extra, args, name)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        print(f"----- {server.name} log (tail) -----\n{server.log_text()[-4000:]}")


@pytest.fixture
def alice():
    """The OS user tt-alice (tests/support/os_users.py; skips where users cannot be made)."""
    from tests.support.os_users import os_user

    return os_user("tt-alice")


@pytest.fixture
def bob():
    from tests.support.os_users import os_user

    return os_user("tt-bob")


@pytest.fixture
def service():
    """``service(inventory=..., config=..., env=..., as_user=...)`` starts ``jupyter tt scheduler``; all stop at the end."""
    from tests.support.os_users import Service

    started = []

    def start(**kw) -> Service:
        started.append(Service(**kw).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()
        print(f"----- service log -----\n{s.log_text()[-3000:]}")
