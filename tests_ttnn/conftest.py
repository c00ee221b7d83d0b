"""The ttnn lane (``make test-ttnn``): runs in a Python 3.12 venv with the PyPI ttnn wheel and torch."""

import os
import tempfile
from pathlib import Path

import mock_cluster  # (beside this file: pytest puts its folder on the path)

# ttnn packs bfloat8_b on the host with tile sizes it reads from a cluster: without a card, give it
# one n150 in mock cluster mode (ttnn's own stand-in). Set before ttnn first builds its cluster.
if not Path("/dev/tenstorrent").exists() and "TT_METAL_MOCK_CLUSTER_DESC_PATH" not in os.environ:
    os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = str(
        mock_cluster.write(Path(tempfile.mkdtemp(prefix="jupyter-tt-mock-")) / "n150.yaml", [("n150", "0000:04:00.0")])
    )

import pytest  # noqa: E402

_REPORT: list[str] = []


@pytest.fixture
def report():
    """``report(line)``: a line for the summary at the end of the run (what the lane showed, e.g. PCC per step)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("what the ttnn lane showed (ttnn's stand-ins: golden functions, mock clusters)")
        for line in _REPORT:
            terminalreporter.write_line(line)
