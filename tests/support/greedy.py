"""Greedy outputs of computations that agree only to a tolerance, and the answers tests may assert word for word.

Which computations are exact, and which agree only to a tolerance (measured by `benchmarks/rounding.py`,
which runs the same model with ATen, MKL and oneDNN held to other instruction sets):

- float32 (the torch backend's reference format, and transformers): the same model gives logits that
  differ by up to about 7e-5 between CPUs (AVX2, AVX-512, AMX), between batch shapes and between the two
  implementations. Not bit-exact anywhere: summation order differs with the kernel.
- int8 (weight-only, bfloat16 activations: what `jupyter tt serve` and `jupyter_tt.serve()` use by
  default): its kernels round activations and logits to bfloat16, so logits differ by up to about
  0.5 between CPUs, and the lead of one token over another by up to 0.25 (bfloat16 logits move in
  steps of 0.125).
- ttnn's bfloat16 / bfloat8_b formats against float32 (the ttnn lane): PCC about 0.999; greedy picks
  differ where float32's top two are within a few tenths.

So a greedy token is the same on every CPU only where it leads the runner-up by more than
`GAP_ERROR`; at a near tie, two CPUs may pick differently and then continue differently. Tests
therefore
- assert word for word only answers that have no near tie (`greedy_branches` finds one branch);
- check a fact of free text on every branch near ties can lead to (`greedy_branches`);
- compare two computations as vLLM's tests do (`check_logprobs_close`): token for token until they
  part, and they may part only at a near tie of the reference (`assert_greedy_agrees`).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from jupyter_tt.serving.engine import SequenceStep

#: A bound on how much the lead of one token's logit over another's changes between two CPUs' kernels,
#: per torch weight format. Measured by benchmarks/rounding.py: float32 2.5e-5; int8 0.25, two steps of
#: bfloat16 at these logits' size. int8 leads are multiples of 0.125, so 0.3 counts leads of up to
#: 0.25 as near ties, and 0.375 (never seen to flip) as decided.
GAP_ERROR = {"float32": 1e-3, "int8": 0.3}

#: Why the OpenVINO runner cannot run here, or None. The other-rounding lane (the Makefile's
#: OTHER_ROUNDING) caps oneDNN's ISA, which OpenVINO's CPU plugin refuses; that lane is about torch's
#: kernels, and OpenVINO's float32 is checked to 1e-3 on every CPU in the main lane.
OPENVINO_SKIP = (
    f"OpenVINO cannot compile with oneDNN capped (ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']})"
    if os.environ.get("ONEDNN_MAX_CPU_ISA") else None
)

#: The chat question whose greedy answer tests assert word for word (through the API, in a kernel, in
#: the chat widget, in notebook 2). Each token of its answer leads the runner-up by at least 0.97
#: (float32) and 1.0 (int8) logits: no near tie, so it is the same on every CPU.
#: (France, the obvious choice, is not: its first token leads by 0.08 in float32 and 0.25 in int8, and
#: int8's near ties lead to hundreds of answers, some in French.)
QUESTION = "What is the capital of Japan?"
ANSWER = "The capital of Japan is Tokyo."
#: Tokens of ANSWER and the end-of-turn token, as usage counts them.
ANSWER_TOKENS = 8


def chat_ids(tokenizer, question: str) -> list[int]:
    """The prompt of one user message, as the chat endpoint builds it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def runner_logits(runner, prompt: Sequence[int]) -> Callable[[Sequence[int]], torch.Tensor]:
    """``logits(prefix)``: the runner's next-token logits after ``prompt + prefix`` (computed afresh, on
    the runner's first blocks: only while no engine uses the runner)."""

    def logits(prefix: Sequence[int]) -> torch.Tensor:
        ids = list(prompt) + list(prefix)
        table = list(range(-(-len(ids) // runner.block_size)))
        with torch.no_grad():
            return runner.step([SequenceStep(tokens=ids, start_pos=0, block_table=table)])[0].float()

    return logits


def greedy_branches(
    runner, prompt: Sequence[int], *, near_tie: float, max_tokens: int, stop_ids: Sequence[int],
    until: Callable[[list[int]], bool] = lambda tokens: False, limit: int = 64,
) -> list[list[int]]:
    """Every output greedy decoding of ``prompt`` can give on some CPU: at each step where another token
    is within ``near_tie`` of the best, both ways are followed. A branch ends at a stop token, after
    ``max_tokens``, or as soon as ``until(tokens)`` holds (a fact that, once in the text, stays there).
    More than ``limit`` branches is an AssertionError: then the output is not one to check this way."""

    def finished(tokens: list[int]) -> bool:
        return bool(tokens) and (tokens[-1] in stop_ids or len(tokens) >= max_tokens or until(tokens))

    table = list(range(-(-(len(prompt) + max_tokens) // runner.block_size)))
    todo, done = [[]], []
    with torch.no_grad():
        while todo:
            tokens = todo.pop()
            if not finished(tokens):
                logits = runner.step([SequenceStep(tokens=list(prompt) + tokens, start_pos=0, block_table=table)])[0].float()
                while True:
                    best = int(logits.argmax())
                    close = (logits >= logits[best] - near_tie).nonzero().flatten().tolist()
                    todo += [tokens + [t] for t in close if t != best]
                    tokens = tokens + [best]
                    if finished(tokens):
                        break
                    logits = runner.step([SequenceStep(tokens=[best], start_pos=len(prompt) + len(tokens) - 1, block_table=table)])[0].float()
            done.append(tokens)
            assert len(done) + len(todo) <= limit, f"more than {limit} branches: too many near ties to check every one"
    return done


def assert_greedy_agrees(
    ours: Sequence[int], theirs: Sequence[int], reference: Callable[[Sequence[int]], torch.Tensor], near_tie: float
) -> int | None:
    """Two greedy outputs of one prompt agree token for token, or part at a step where the reference's
    logits of the two picks are within ``near_tie``; after that they are not compared. Returns the step
    where they parted (None: the same tokens)."""
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            logits = reference(list(ours[:k]))
            gap = abs(float(logits[a] - logits[b]))
            assert gap < near_tie, (
                f"the outputs part at step {k} (token {a} against {b}) where the reference's logits of the two"
                f" are {gap:.3g} apart: more than a near tie ({near_tie}), so one computation is wrong"
            )
            return k
    assert len(ours) == len(theirs), f"one output stops early: {len(ours)} against {len(theirs)} tokens"
    return None
