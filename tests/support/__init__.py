"""What the tests share: real Jupyter servers (``jupyter_servers``), real OS users (``os_users``), the
driver's sysfs tree as a stand-in for cards (``sysfs_tree``), a fake tt-smi (``fake_tt_smi``), the
stacks of a hanging test's processes (``hang_stacks``), greedy-token checks that survive rounding
(``greedy``), a fake model runner for the engine (``engines``), driving a kernel (``kernels``) and the stress runner (``stress``: ``python -m tests.support.stress``)."""
