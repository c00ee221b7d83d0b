"""Kernels that hold devices: the ``tt-provisioner`` and the kernelspecs that use it."""
