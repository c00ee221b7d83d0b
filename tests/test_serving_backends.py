"""The one registry of backends and weight formats, and that everything which names them reads it."""

import subprocess
import sys

import pytest

from jupyter_tt.errors import TTError
from jupyter_tt.serving.backends import BACKENDS, get_backend


def test_each_backend_registered_accepts_exactly_the_weight_formats_its_runner_knows():
    from jupyter_tt.serving.backends.openvino.runner import WEIGHT_FORMATS as openvino
    from jupyter_tt.serving.backends.torch.runner import WEIGHT_FORMATS as torch_formats
    from jupyter_tt.serving.backends.ttnn.model import WEIGHT_FORMATS as ttnn

    assert {name: set(b.weight_formats) for name, b in BACKENDS.items()} == {
        "torch": set(torch_formats), "openvino": set(openvino), "ttnn": set(ttnn)}


def test_a_weight_format_of_another_backend_is_refused_with_the_ones_to_use():
    with pytest.raises(TTError, match="'accuracy' is not one of the torch backend's formats: use int8 or bfloat16 or float32"):
        get_backend("torch").check("accuracy")
    with pytest.raises(TTError, match="unknown backend 'cuda': use torch, openvino, ttnn"):
        get_backend("cuda")
    assert get_backend("openvino").check() == ("int8", "jupyter-tt")


def test_the_serve_command_offers_the_registered_backends_and_formats():
    out = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for b in BACKENDS.values():
        assert b.name in out and all(w in out for w in b.weight_formats)
    bad = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", "serve", "--backend", "torch", "--weights", "performance"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "'performance' is not one of the torch backend's formats" in bad.stderr


def test_serve_in_a_notebook_refuses_a_wrong_format_before_it_starts_a_server():
    from jupyter_tt.serving.notebook import _servers, serve

    with pytest.raises(TTError, match="is not one of the openvino backend's formats"):
        serve(backend="openvino", weights="bfloat16")
    assert not _servers
