"""Per-request state of a vLLM EPIC decode, in one struct per sequence (vLLM's ``v1/sample``
metadata style): the prompt and what was generated, the seed, the root logprobs of the next
position, the step in progress and what each step cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Root:
    """The model's top logprobs (log q over the full vocabulary) at a sequence's next position."""

    ids: torch.Tensor          # int64 [L], by logprob descending (ties: lower id)
    values: torch.Tensor       # float32 [L]


@dataclass
class StepRecord:
    """What one EPIC step of one sequence cost on the engine."""

    token: int
    survivors: int             # candidates left by the first (admissible-window) prune
    evaluated: int             # candidates that got at least one request
    depth_reached: list        # per survivor, the depth its estimate reached
    rounds: int                # engine rounds this step took part in (including its root request)
    requests: int              # requests it sent
    generated: int             # tokens the engine generated for it (samples x max_tokens)
    prompt_tokens: int         # prompt tokens it sent (cached or not)
    cached_tokens: int         # ... of which the engine served from its prefix cache (when reported)
    entropy: float             # the winner's lookahead-entropy estimate (NaN when it needed none)
    trace: dict | None = None  # with trace=True: candidate ids, z, depths, partial sums, rollout tokens


@dataclass
class SequenceState:
    index: int
    prompt: list
    seed: int
    max_new_tokens: int
    eos: frozenset
    tokens: list = field(default_factory=list)
    root: Root | None = None
    step: object | None = None          # the step in progress (decoder._Step)
    done: bool = False
    finish_reason: str | None = None
    steps: list = field(default_factory=list)
    # cost of the step in progress, moved into its StepRecord when it ends
    rounds: int = 0
    requests: int = 0
    generated: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def prefix(self) -> tuple:
        return tuple(self.prompt) + tuple(self.tokens)

    @property
    def position(self) -> int:
        """Position of the token being sampled: the sequence's own length (the noise key)."""
        return len(self.prompt) + len(self.tokens)

    def charge(self, request, response) -> None:
        self.requests += 1
        self.generated += request.n * request.max_tokens
        self.prompt_tokens += len(request.prompt)
        self.cached_tokens += response.cached_tokens or 0

    def take_costs(self) -> dict:
        out = dict(rounds=self.rounds, requests=self.requests, generated=self.generated,
                   prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens)
        self.rounds = self.requests = self.generated = self.prompt_tokens = self.cached_tokens = 0
        return out


__all__ = ["Root", "StepRecord", "SequenceState"]
