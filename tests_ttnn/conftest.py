"""The ttnn lane (``make test-ttnn``): runs in a Python 3.12 venv with the PyPI ttnn wheel and torch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # sysfs_tree: the driver stand-in
