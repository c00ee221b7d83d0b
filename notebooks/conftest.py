"""nbval runs these notebooks (`make test-notebooks`: pytest --nbval notebooks) on the workshop host
that `workshop.py` sets up: a simulated inventory unless JUPYTER_TT_INVENTORY says otherwise.
"""

import workshop

from tests.support.hang_stacks import pytest_runtest_protocol  # noqa: F401 (stacks of the kernel and model server before a timeout)


def pytest_configure(config):
    if config.getoption("nbval", default=False) or config.getoption("nbval_lax", default=False):
        workshop.setup()
