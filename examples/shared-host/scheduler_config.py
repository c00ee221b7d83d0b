# The scheduler service's configuration on a host that a team shares (a LoudBox behind JupyterHub).
# Install:  sudo install -D -m 0644 scheduler_config.py /etc/jupyter-tt/scheduler_config.py
# and point the service at it: ExecStart=... jupyter tt scheduler --config /etc/jupyter-tt/scheduler_config.py
# (`jupyter tt scheduler --print-unit` prints the unit). Every Jupyter server on the host follows the
# idle policy set here; quotas and resets are the service's alone. Reload: systemctl restart
# jupyter-tt-scheduler (leases live on through the restart).
c = get_config()  # noqa: F821 (traitlets' config files get it from their loader)

# Fair shares: nobody holds more than two of the four n300 cards at once, unless named here.
c.TTSettings.quota = 2
c.TTSettings.user_quotas = {}  # e.g. {"alice": 4} for whoever runs the 4-card (LoudBox) benchmarks

# Idle devices go to whoever waits: a kernel idle for 30 minutes while a request waits for its cards is
# warned in JupyterLab, and shut down 5 minutes later unless it runs something. Nothing is taken while
# nobody waits, and a busy kernel never.
c.TTSettings.idle_timeout = 1800.0
c.TTSettings.idle_grace = 300.0

# Reset after a crash: left to its default, on where tt-umd or tt-smi is installed (the service's log
# says which). Set False to turn it off, or reset_tool = "tt-smi" to prefer tt-smi over tt-umd.
# c.TTSettings.reset_after_crash = True
