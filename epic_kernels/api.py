"""The public step API: ``sample_step(logits, kv, model, ...)`` for inference loops."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import check_config, check_logits
from .reference import EpicConfig, SampleStats, lazy_sample
from .rollout import Prefix
from .truncation import truncate


@dataclass
class StepOutput:
    """What one EPIC step returns.

    tokens : int64 ``[B]``, the sampled next tokens.
    stats : SampleStats (survivors, evaluations, forward calls and tokens).
    entropy : ``[B]``, the winner's lookahead-entropy estimate (NaN where no forward was needed).
    next_logits, kv : the next position's logits and cache when the winner's forward can be reused
        (``None`` on the reference path, which keeps no KV).
    """

    tokens: torch.Tensor
    stats: SampleStats
    entropy: torch.Tensor
    next_logits: torch.Tensor | None = None
    kv: object | None = None


@torch.no_grad()
def sample_step(logits: torch.Tensor, kv, model, *, alpha: float, horizon: int = 4, rollouts: int = 2,
                seed=0, attention_mask: torch.Tensor | None = None, rollout_top_k: int | None = None,
                top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                block_size: int = 4) -> StepOutput:
    """Sample one token per sequence from ``q_alpha(y) ∝ q(y) exp(-alpha H(y))`` exactly.

    Parameters
    ----------
    logits : float ``[B, V]``, next-token logits after each prefix (``-inf`` = removed token).
    kv : the model's cache (transformers ``Cache``) for those prefixes, batch ``B``; not modified.
    model : causal LM called as ``model(input_ids, attention_mask, position_ids, past_key_values)``.
    alpha : entropy weight; 0 is plain sampling, > 0 prefers low-entropy futures.
    horizon : lookahead depth k >= 1.
    rollouts : rollouts K >= 1 of the Rao-Blackwellized estimator.
    seed : int (row b uses ``seed + b``) or ``B`` ints in [0, 2**32), one key per sequence.
    attention_mask : ``[B, L]`` of the cached prefix (0 = left padding); all ones if omitted.
    rollout_top_k : truncate the rollout policy to its top-k tokens (tighter bounds, cheaper).
    top_k, top_p, min_p : truncate the candidates before EPIC.
    block_size : candidates refined per sequence per round of the best-first search.

    Returns
    -------
    StepOutput
    """
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts,
                     rollout_top_k=rollout_top_k, block_size=block_size)
    check_config(cfg)
    check_logits(logits)
    prefix = Prefix.build(kv, seed, logits.shape[0], attention_mask, model)
    logits = truncate(logits, top_k, top_p, min_p)
    result = lazy_sample(logits, prefix, model, cfg)
    return StepOutput(result.tokens, result.stats, result.entropy)
