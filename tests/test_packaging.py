"""`pip install jupyter-tt` brings the prebuilt JupyterLab extension: no build or enable step (the README's install line)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_the_built_labextension_and_enables_the_server_extension(tmp_path):
    # The sources without build outputs, so that the wheel build runs npm itself (as on a release machine).
    src = tmp_path / "src"
    outputs = {".git", ".venv", ".venv-ttnn", ".peers", "node_modules", "lib", "test-artifacts", "__pycache__", "_build"}
    shutil.copytree(ROOT, src, ignore=lambda folder, names: [
        n for n in names if n in outputs or (n == "labextension" and Path(folder).name == "jupyter_tt")
    ])
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("jupyter_tt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = next(n.split("/data/")[0] for n in names if "/data/" in n) + "/data/"
    ext = data + "share/jupyter/labextensions/jupyter-tt/"
    assert ext + "package.json" in names and ext + "install.json" in names
    assert ext + "schemas/jupyter-tt/plugin.json" in names  # the panel's settings (pollInterval)
    assert any(n.startswith(ext + "static/remoteEntry.") and n.endswith(".js") for n in names)
    assert data + "etc/jupyter/jupyter_server_config.d/jupyter_tt.json" in names
    # The production build: minified, no source maps.
    assert not any(n.endswith(".js.map") for n in names)
