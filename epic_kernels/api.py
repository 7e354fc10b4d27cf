"""The public step API: ``sample_step(logits, kv, model, ...)`` for inference loops."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from . import defaults as D
from .validate import check_config, check_logits
from .reference import EpicConfig, SampleStats, lazy_sample
from .rollout import Prefix, cache_layers, select_rows
from .engine.prefetch import Prefetched
from .truncation import truncate


@dataclass
class StepOutput:
    """What one EPIC step returns.

    tokens : int64 ``[B]``, the sampled next tokens.
    stats : SampleStats (survivors, evaluations, forward calls and tokens; ``stats.extra`` has
        ``forwards_saved``: sequences whose next forward came from the winner's own evaluation).
    entropy : ``[B]``, the winner's lookahead-entropy estimate (NaN where no forward was needed).
    next_logits : ``[B, V]`` logits after appending ``tokens`` (``advance=True`` only).
    kv : a new ``DynamicCache`` = the given cache plus ``tokens`` (``advance=True`` only); the
        cache passed in is never modified.
    attention_mask : ``[B, L + 1]`` mask of ``kv`` (``advance=True`` only).
    prefetched : the next step, evaluated on a bet inside this step's model calls as far as they went
        (fast engine, ``advance=True``). Pass it to the next call, ``sample_step(out.next_logits, out.kv,
        model, ..., prefetched=out.prefetched)``, to skip them; it is used only with that very
        ``kv`` and those logits, and the tokens are the same without it.
    """

    tokens: torch.Tensor
    stats: SampleStats
    entropy: torch.Tensor
    next_logits: torch.Tensor | None = None
    kv: object | None = None
    attention_mask: torch.Tensor | None = None
    prefetched: Prefetched | None = None


@torch.no_grad()
def sample_step(logits: torch.Tensor, kv, model, *, alpha: float, horizon: int = 4, rollouts: int = 2,
                seed=0, attention_mask: torch.Tensor | None = None, rollout_top_k: int | None = None,
                top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                block_size: int = D.BLOCK_SIZE, advance: bool = True, engine: str = "auto",
                backend: str | None = None, prefetched=None) -> StepOutput:
    """Sample one token per sequence from ``q_alpha(y) ∝ q(y) exp(-alpha H(y))`` exactly.

    Parameters
    ----------
    logits : float ``[B, V]``, next-token logits after each prefix (``-inf`` = removed token).
    kv : the model's cache (transformers ``Cache``) for those prefixes, batch ``B``; never modified.
    model : causal LM called as ``model(input_ids, attention_mask, position_ids, past_key_values)``.
    alpha : entropy weight; 0 is plain sampling, > 0 prefers low-entropy futures.
    horizon : lookahead depth k >= 1.
    rollouts : rollouts K >= 1 of the Rao-Blackwellized estimator.
    seed : int (row b uses ``seed + b``) or ``B`` ints in [0, 2**32), one key per sequence.
    attention_mask : ``[B, L]`` of the cached prefix (0 = left padding); all ones if omitted.
    rollout_top_k : truncate the rollout policy to its top-k tokens (tighter bounds, cheaper).
    top_k, top_p, min_p : truncate the candidates before EPIC.
    block_size : candidates refined per sequence per round of the best-first search.
    advance : also return the next logits and the cache extended by the sampled tokens, reusing the
        winner's own forward where it had one (a plain loop's forward saved).
    engine : ``"fast"`` (fork attention, needs a model whose attention goes through transformers'
        attention interface, e.g. Llama), ``"reference"`` (pure PyTorch), or ``"auto"``.
    backend : kernel backend for the fast engine (``"reference" | "cpu" | "triton"``; default by device).
    prefetched : ``StepOutput.prefetched`` of the previous step (optional; see ``StepOutput``).

    Returns
    -------
    StepOutput. Both engines return the same tokens for the same seeds.
    """
    from .engine import PrefixView, fast_sample, supports_fork

    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts,
                     rollout_top_k=rollout_top_k, block_size=block_size)
    check_config(cfg)
    check_logits(logits)
    if engine not in ("auto", "fast", "reference"):
        raise ValueError(f"engine must be 'auto', 'fast' or 'reference', got {engine!r}")
    if prefetched is not None and not isinstance(prefetched, Prefetched):
        raise ValueError(f"prefetched must be the .prefetched of a previous StepOutput (or None), "
                         f"got {type(prefetched).__name__}")
    prefix = Prefix.build(kv, seed, logits.shape[0], attention_mask, model)
    logits = truncate(logits, top_k, top_p, min_p)
    fast = engine == "fast" or (engine == "auto" and supports_fork(model))
    if engine == "fast" and not supports_fork(model):
        raise ValueError(f"engine='fast' needs a model with transformers attention layers, got {type(model).__name__}")
    next_mask = torch.cat([prefix.mask, torch.ones_like(prefix.mask[:, :1])], dim=1)
    if not fast:
        result = lazy_sample(logits, prefix, model, cfg)
        if not advance:
            return StepOutput(result.tokens, result.stats, result.entropy)
        layers = cache_layers(kv)
        new_kv = select_rows(layers, torch.arange(logits.shape[0]))
        out = model(input_ids=result.tokens.view(-1, 1), attention_mask=next_mask,
                    position_ids=prefix.positions.view(-1, 1), past_key_values=new_kv, use_cache=True)
        result.stats.extra["forwards_saved"] = 0
        return StepOutput(result.tokens, result.stats, result.entropy, out.logits[:, -1, :], new_kv, next_mask)
    view = PrefixView(cache_layers(kv), prefix.mask, prefix.positions, prefix.seeds)
    if prefetched is not None and (prefetched.owner is None or prefetched.owner() is not kv):
        prefetched = None                          # made for another cache: not applicable
    transform = (lambda x, seq, tokens: truncate(x, top_k, top_p, min_p)) if advance else None
    step = fast_sample(logits, view, model, cfg, backend, advance=advance, prefetched=prefetched,
                       transform=transform, pool=prefetched.pool if prefetched is not None else None)
    if not advance:
        return StepOutput(step.tokens, step.stats, step.entropy)
    from transformers import DynamicCache

    new_kv = DynamicCache(ddp_cache_data=[
        (torch.cat([k, nk.unsqueeze(2)], dim=2), torch.cat([v, nv.unsqueeze(2)], dim=2))
        for (k, v), nk, nv in zip(view.layers, step.next_keys, step.next_values)])
    if step.prefetched is not None:
        step.prefetched.owner = weakref.ref(new_kv)
        step.prefetched.pool = step.pool          # the next step reuses the slot storage
    return StepOutput(step.tokens, step.stats, step.entropy, step.next_logits, new_kv, next_mask,
                      step.prefetched)
