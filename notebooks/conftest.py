"""nbval runs these notebooks (`make test-notebooks`: pytest --nbval notebooks) on the workshop host
that `workshop.py` sets up: a simulated inventory unless JUPYTER_TT_INVENTORY says otherwise.
"""

import workshop


def pytest_configure(config):
    if config.getoption("nbval", default=False) or config.getoption("nbval_lax", default=False):
        workshop.setup()
