"""A fake model runner for the engine's scheduling tests, and helpers to drive an engine with it.

``CacheCheckingRunner`` keeps a token in each cache slot it is given, reads every sequence's
context back through its block table, and answers with a token that depends on the whole context.
So a block table that points at another sequence's blocks, or a context recomputed wrongly after a
preemption, changes the tokens a request gets.
"""

import pytest
import torch

from jupyter_tt.serving.engine import Engine, ModelRunner, SamplingParams, SequenceStep
from jupyter_tt.serving.llama import ModelArgs

VOCAB = 32
BLOCK = 4


class CharTokenizer:
    """Token i is the letter chr(97 + i % 26); no end-of-sequence token."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


class CacheCheckingRunner(ModelRunner):
    block_size = BLOCK

    def __init__(self, num_blocks: int):
        self.args = ModelArgs(vocab_size=VOCAB, dim=8, n_layers=1, n_heads=1, n_kv_heads=1, intermediate_size=8,
                              max_seq_len=1024)
        self.num_blocks = num_blocks
        self.cache = [[None] * BLOCK for _ in range(num_blocks)]
        self.steps: list[list[SequenceStep]] = []

    def step(self, sequences):
        self.steps.append(sequences)
        rows = []
        for s in sequences:
            for i, token in enumerate(s.tokens):
                pos = s.start_pos + i
                self.cache[s.block_table[pos // BLOCK]][pos % BLOCK] = token
            context = [self.cache[s.block_table[p // BLOCK]][p % BLOCK] for p in range(s.start_pos + len(s.tokens))]
            assert None not in context, "a sequence read a cache slot nothing wrote"
            if s.want_logits:
                logits = torch.zeros(VOCAB)
                logits[(sum(t * (p + 1) for p, t in enumerate(context))) % VOCAB] = 1.0
                rows.append(logits)
        return torch.stack(rows) if rows else torch.empty(0, VOCAB)


def make_engine(num_blocks=64, **kw):
    kw = {"max_num_seqs": 4, "max_step_tokens": 8, "max_prefill_tokens": 8, **kw}
    return Engine(CacheCheckingRunner(num_blocks), CharTokenizer(), **kw)


def add(engine, prompt, max_tokens, outputs):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return engine.add_request(prompt, params, outputs.append)


def run(engine, limit=1000):
    for _ in range(limit):
        if not engine.has_work:
            return
        engine.step()
    pytest.fail("the engine did not finish its requests")


def tokens_of(outputs, request_id):
    return [t for o in outputs if o.request_id == request_id for t in o.token_ids]
