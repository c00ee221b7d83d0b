"""The serving engine: the loop (``core``), which tokens run each step (``batching``), what a step
produces for each client (``output``: detokenizing and stops), token choice (``sampling``), and the
contract every model backend implements (``runner``)."""

from .core import Engine, EngineBusy, PromptTooLong
from .output import FinishReason, Output
from .runner import ModelRunner, SequenceStep
from .sampling import SamplingError, SamplingParams

__all__ = [
    "Engine", "EngineBusy", "FinishReason", "ModelRunner", "Output", "PromptTooLong", "SamplingError",
    "SamplingParams", "SequenceStep",
]
