"""``ServingBatch``: the vLLM engine's continuous batch, with ``batch.DecodeBatch``'s interface
(``admit`` / ``step`` / ``remove`` / ``take``), so ``epic-serve`` can front a vLLM server.

Its sequences are ``EpicServingDecoder`` sequences: each round sends what every sequence needs next
as one batch of requests, and a sequence that finished its step starts the next in the next round
while others still refine theirs. So a ``step`` here runs rounds until at least one sequence has
new tokens, and returns those (a sequence can have more than one). Ends (EOS, length, stop strings)
are the caller's: the decoder runs each sequence until it is removed. A round that fails cannot be
undone (its requests were planned), so its sequences fail together (``SequenceError`` naming all).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch

from ..batch import SequenceError

MAX_TOKENS = 1 << 30           # the decoder's own bound; the caller removes sequences before it


@dataclass
class ServingStep:
    """Tokens of one ``ServingBatch.step``: ``tokens[i]`` for sequence ``handles[i]`` (in order; a
    handle may repeat)."""

    handles: list[int]
    tokens: torch.Tensor
    records: list                  # the decoder's StepRecord of each token

    @property
    def entropies(self) -> torch.Tensor:
        """H(q) needs the full distribution, which a serving engine does not return: NaN."""
        return torch.full((len(self.handles),), math.nan)

    def costs(self, i: int) -> dict:
        """Token ``i``'s own cost: engine rounds it took part in, tokens the engine generated for it,
        candidates evaluated."""
        r = self.records[i]
        return dict(model_calls=r.rounds, rows=r.generated, evaluated=r.evaluated)


class ServingBatch:
    def __init__(self, decoder):
        self.decoder = decoder
        self.seqs: dict = {}
        self._ids = itertools.count()

    @property
    def handles(self) -> list[int]:
        return list(self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def admit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seeds: torch.Tensor) -> list[int]:
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        handles = [next(self._ids) for _ in prompts]
        for h, s in zip(handles, self.decoder.begin(prompts, seeds.tolist(), MAX_TOKENS, None, first_index=handles[0])):
            self.seqs[h] = s
        return handles

    def step(self, advance: bool = True) -> ServingStep:
        if not self.seqs:
            raise RuntimeError("ServingBatch.step: the batch is empty (admit a sequence first)")
        before = {h: len(s.tokens) for h, s in self.seqs.items()}
        while True:
            try:
                sent = self.decoder.round(list(self.seqs.values()))
            except Exception as err:      # noqa: BLE001 - a round is not undone: its sequences fail together
                raise SequenceError(f"the serving engine failed in a round of {len(self.seqs)} sequences: "
                                    f"{type(err).__name__}: {err}", self.handles) from err
            new = [(h, t, rec) for h, s in self.seqs.items()
                   for t, rec in zip(s.tokens[before[h]:], s.steps[before[h]:])]
            if new or not sent:
                break
        return ServingStep([n[0] for n in new], torch.tensor([n[1] for n in new], dtype=torch.int64),
                           [n[2] for n in new])

    def remove(self, handles) -> None:
        for h in handles:
            self.seqs.pop(h, None)

    def take(self, handles) -> "ServingBatch":
        other = copy.copy(self)
        other.seqs = {h: self.seqs.pop(h) for h in list(handles) if h in self.seqs}
        return other


__all__ = ["ServingBatch", "ServingStep"]
