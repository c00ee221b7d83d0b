"""What the ttnn runners share: they prefill one sequence at a time and decode a padded batch."""

from __future__ import annotations

import torch

from ...engine.runner import SequenceStep


def decode_indices(sequences: list[SequenceStep]) -> list[int]:
    """The sequences that decode: one token after a cached context (a whole prompt of one token prefills)."""
    return [i for i, s in enumerate(sequences) if len(s.tokens) == 1 and s.start_pos > 0]


def page_table(block_tables: list[list[int]], rows: int, width: int, scratch: int) -> torch.Tensor:
    """Block tables as an int32 ``[rows, width]`` tensor, padded (and padding rows filled) with ``scratch``."""
    out = torch.full((rows, width), scratch, dtype=torch.int32)
    for i, table in enumerate(block_tables):
        out[i, : min(len(table), width)] = torch.tensor(table[:width], dtype=torch.int32)
    return out


def wanted_logits(logits: dict[int, torch.Tensor], sequences: list[SequenceStep], vocab_size: int) -> torch.Tensor:
    """``ModelRunner.step``'s result from per-sequence logits: the wanted ones, in order."""
    wanted = [logits[i] for i, s in enumerate(sequences) if s.want_logits]
    return torch.stack(wanted) if wanted else torch.empty(0, vocab_size)
