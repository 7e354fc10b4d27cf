"""The transport protocol: how the EPIC step reaches a serving engine.

The step (``decoder.py``) is written once against this protocol; ``offline.py`` implements it over an
in-process ``vllm.LLM`` and ``server.py`` over an OpenAI-compatible server (``vllm serve``) reached by
URL. A transport knows nothing about EPIC: it takes a batch of ``Request``s (token-id prompts, how
many samples, how many tokens, the seed and the sampler's top-k, how many logprobs) and returns, per
request, the samples with the top logprobs of every generated position. Everything EPIC-specific
(candidates, entropies, bounds, the stopping rule) happens in the library.

A transport reports what the decoder must check before it sends anything (``EngineInfo``): the
engine's ``max_logprobs``, whether prefix caching is on, whether logprobs are raw (log q over the
full vocabulary, vLLM's default ``raw_logprobs`` mode), the vocabulary size and the tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch


class ServingError(ValueError):
    """A problem with the serving engine or with what was asked of it (the message names it)."""


class SeedPropertyError(ServingError):
    """The engine's seeded sampler broke a property exact EPIC relies on (docs/vllm.md)."""


@dataclass(frozen=True)
class Request:
    """One generation request.

    prompt : token ids (the prefix, plus the candidate and nothing else: never text).
    max_tokens : tokens to generate per sample (each position's logprobs are returned).
    logprobs : how many top logprobs per generated position.
    n : samples (rollouts); they share the prompt's KV through prefix caching.
    seed : the sampler's seed (sample ``i`` uses ``seed + i`` in vLLM); None: unseeded.
    top_k : the sampler's top-k (the rollout policy); None: greedy (the sampled token is unused).
    """

    prompt: tuple
    max_tokens: int
    logprobs: int
    n: int = 1
    seed: int | None = None
    top_k: int | None = None

    def group_key(self):
        """Requests with equal keys can travel in one API call (same sampling parameters)."""
        return (self.max_tokens, self.logprobs, self.n, self.seed, self.top_k)


@dataclass
class Sample:
    """One sample of a request: its tokens and, per generated position, the top logprobs as
    ``ids`` (int64 ``[L]``) and ``values`` (float32 ``[L]``), sorted by value descending (ties: lower id)."""

    tokens: list
    ids: list = field(default_factory=list)        # per position: int64 [L]
    values: list = field(default_factory=list)     # per position: float32 [L]


@dataclass
class Response:
    samples: list                                  # n Samples
    cached_tokens: int | None = None               # prompt tokens served from the prefix cache (if reported)


@dataclass
class EngineInfo:
    max_logprobs: int
    prefix_caching: bool | None                    # None: the engine does not say
    vocab_size: int
    eos_token_ids: list
    tokenizer: object | None                       # a transformers tokenizer, or None
    model: str = ""
    raw_logprobs: bool | None = None               # None: checked by the probe request


@runtime_checkable
class Transport(Protocol):
    info: EngineInfo

    def generate(self, requests: Sequence[Request]) -> list:
        """One round: every request of the batch submitted together; returns one ``Response`` each,
        in order."""

    def close(self) -> None:
        """Release what the transport started (an engine it created; nothing for a URL)."""


def sort_logprobs(pairs, limit: int):
    """``(ids, values)`` tensors of the ``limit`` largest logprobs among ``pairs`` ((id, logprob)
    items), by value descending, ties to the lower id."""
    top = sorted(pairs, key=lambda p: (-p[1], p[0]))[:limit]
    return (torch.tensor([p[0] for p in top], dtype=torch.int64),
            torch.tensor([p[1] for p in top], dtype=torch.float32))


__all__ = ["ServingError", "SeedPropertyError", "Request", "Sample", "Response", "EngineInfo", "Transport",
           "sort_logprobs"]
