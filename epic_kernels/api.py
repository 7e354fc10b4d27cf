"""The step API: ``sample_step(logits, kv, model, ...)`` for inference loops, and ``run_step``, the
one step that ``sample_step``, ``generate`` and the Hugging Face integration all run.

A step reads the prefix from an ``EpicCache`` (``epic_kernels.cache``): a cache of another type is
copied into one once, and the cache a step returns shares the given one's storage, with the sampled
tokens appended beyond the given cache's own length, so a long decode copies no prefix.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import defaults
from .cache import EpicCache
from .core import EpicConfig, Prefix, StepStats
from .engine.prefetch import Prefetched
from .reference import lazy_sample
from .truncation import truncate
from .validate import check_config, check_logits, check_not_meta, check_position_limit, check_vocab

ENGINES = ("auto", "fast", "reference")


@dataclass
class StepOutput:
    """What one EPIC step returns.

    tokens : int64 ``[B]``, the sampled next tokens.
    stats : ``StepStats`` (survivors, evaluations, model calls and rows, forwards saved, prefetch).
    entropy : ``[B]``, the winner's lookahead-entropy estimate (NaN where no forward was needed).
    next_logits : ``[B, V]`` logits after appending ``tokens`` (``advance=True`` only).
    kv : an ``EpicCache``: the given cache plus ``tokens`` (``advance=True`` only); the cache passed
        in is never modified.
    attention_mask : ``[B, L + 1]`` mask of ``kv`` (``advance=True`` only).
    prefetched : what this step evaluated of the next one (fast engine, ``advance=True``): on a bet,
        inside this step's model calls as far as they went, and the winners' own rollouts, whose
        first tokens are the next step's candidates (``engine.reuse``). Pass it to the next call,
        ``sample_step(out.next_logits, out.kv, model, ..., prefetched=out.prefetched)``, to skip
        those evaluations. It applies only to that very ``kv``, unmodified, those logits and the same
        step settings; anything else ignores it (the tokens are the same without it).
    """

    tokens: torch.Tensor
    stats: StepStats
    entropy: torch.Tensor
    next_logits: torch.Tensor | None = None
    kv: EpicCache | None = None
    attention_mask: torch.Tensor | None = None
    prefetched: Prefetched | None = None


_warned: set = set()


def use_fast_engine(engine: str, model, max_position: int | None = None) -> bool:
    """Whether ``engine`` ("auto" | "fast" | "reference") runs the fast engine for ``model`` when the
    rows reach position ids up to ``max_position``. "fast" on a model the fast engine cannot run
    exactly is an error; "auto" then runs the reference engine, with the reason in one warning."""
    from .engine.attention import fork_refusal

    if engine not in ENGINES:
        raise ValueError(f"engine must be 'auto', 'fast' or 'reference', got {engine!r}")
    if engine == "reference":
        return False
    why = fork_refusal(model, max_position)
    if why is None:
        return True
    if engine == "fast":
        raise ValueError(f"engine='fast' cannot run {type(model).__name__} exactly: {why}")
    key = (type(model).__name__, why)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"epic_kernels: the fast engine cannot run {type(model).__name__} exactly ({why}); "
                      "using the reference engine (same tokens, slower)", RuntimeWarning, stacklevel=3)
    return False


def warn_if_expensive(logits: torch.Tensor, prefix: Prefix, cfg: EpicConfig, backend: str | None = None,
                      stacklevel: int = 4) -> bool:
    """Before a step: warn (``RuntimeWarning``, pointing ``stacklevel`` frames up: by default at the
    call of the ``torch.no_grad``-decorated entry point that called this) when its first prune
    will leave more than ``defaults.WARN_SURVIVORS`` candidates in a row (each costs at least one model
    row: such a step can run for minutes), with the fix. ``logits`` are the step's, truncated. Runs
    the step's own prune (keyed, so the same survivors) only when a row has that many finite
    logits. Returns whether it warned."""
    from .core import window
    from .engine.search import prune_on_host
    from .ops import choose

    if int(torch.isfinite(logits).sum(-1).max()) <= defaults.WARN_SURVIVORS:
        return False
    width = window(cfg.alpha, cfg.horizon, logits.shape[-1], cfg.rollout_top_k)
    survivors = int(prune_on_host(logits, prefix.seeds, prefix.positions, width, choose(logits.device, backend))
                    .counts.max())
    if survivors <= defaults.WARN_SURVIVORS:
        return False
    warnings.warn(f"epic_kernels: this step has {survivors} candidates in its admissible window (each costs at "
                  "least one model row), so it will run for a long time: this configuration is intrinsically "
                  "expensive. Truncate the rollout policy (rollout_top_k=50, --rollout-top-k 50), truncate the "
                  f"candidates (top_k) or use a smaller |alpha| (now {cfg.alpha})", RuntimeWarning, stacklevel=stacklevel)
    return True


@torch.no_grad()
def run_step(logits: torch.Tensor, cache: EpicCache, prefix: Prefix, model, cfg: EpicConfig, *, fast: bool,
             backend: str | None = None, advance: bool = True, prefetched: Prefetched | None = None,
             transform=None, reuse: bool = True) -> StepOutput:
    """One EPIC step over ``cache`` (an ``EpicCache``; ``prefix`` views it). Inputs are validated
    by the caller. ``transform`` (fast engine, ``advance``): what the caller applies to the next
    logits before the next step, which lets the step prefetch that step (``engine.step.fast_sample``);
    ``reuse``: hand the winners' rollouts to the next step (``engine.reuse``)."""
    next_mask = torch.cat([prefix.mask, torch.ones_like(prefix.mask[:, :1])], dim=1)
    if not fast:
        result = lazy_sample(logits, prefix, model, cfg)
        if not advance:
            return StepOutput(result.tokens, result.stats, result.entropy)
        new_kv = cache.fork()          # the model appends the tokens to the fork, not to `cache`
        device = prefix.device
        out = model(input_ids=result.tokens.view(-1, 1).to(device), attention_mask=next_mask.to(device),
                    position_ids=prefix.positions.view(-1, 1).to(device), past_key_values=new_kv, use_cache=True)
        return StepOutput(result.tokens, result.stats, result.entropy, out.logits[:, -1, :], new_kv, next_mask)
    from .engine import fast_sample

    usable = prefetched is not None and prefetched.made_for(cache, cfg, model)
    step = fast_sample(logits, prefix, model, cfg, backend, advance=advance,
                       prefetched=prefetched if usable else None, transform=transform,
                       pool=prefetched.pool if prefetched is not None else None, reuse=reuse)
    if not advance:
        return StepOutput(step.tokens, step.stats, step.entropy)
    new_kv = cache.appended(step.next_keys, step.next_values)
    handed = step.prefetched.bind(new_kv) if step.prefetched is not None else None
    return StepOutput(step.tokens, step.stats, step.entropy, step.next_logits, new_kv, next_mask, handed)


@torch.no_grad()
def sample_step(logits: torch.Tensor, kv, model, *, alpha: float, horizon: int = defaults.HORIZON,
                rollouts: int = defaults.ROLLOUTS, seed=0, attention_mask: torch.Tensor | None = None,
                rollout_top_k: int | None = None, top_k: int | None = None, top_p: float | None = None,
                min_p: float | None = None, block_size: int = defaults.BLOCK_SIZE, advance: bool = True,
                engine: str = "auto", backend: str | None = None, prefetched=None,
                max_rows: int | None = defaults.MAX_ROWS) -> StepOutput:
    """Sample one token per sequence from ``q_alpha(y) ∝ q(y) exp(-alpha H(y))`` exactly.

    Parameters
    ----------
    logits : float ``[B, V]``, next-token logits after each prefix (``-inf`` = removed token).
    kv : the model's cache (a transformers ``Cache``) for those prefixes, batch ``B``; never modified.
        The ``kv`` of a previous ``StepOutput`` (an ``EpicCache``) is used without copying; any other
        cache is copied once.
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
    backend : kernel backend for the fast engine (see ``epic_kernels.ops``; default by device).
    prefetched : ``StepOutput.prefetched`` of the previous step (optional; see ``StepOutput``).
    max_rows : fast engine: the most rows one model call carries and the most depth-1 logits rows
        kept beyond those of candidates that go deeper (bounded memory whatever the number of
        survivors; more work takes more calls, the tokens do not change). None: no cap.

    Returns
    -------
    StepOutput. Both engines return the same tokens for the same seeds.

    Bad input is a ValueError before anything changes (``epic_kernels.validate``); a step with more
    than ``defaults.WARN_SURVIVORS`` survivors warns before it starts (``warn_if_expensive``).
    """
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts,
                     rollout_top_k=rollout_top_k, block_size=block_size, max_rows=max_rows)
    check_config(cfg)
    check_not_meta(model, first_only=True, logits=logits)
    check_logits(logits)
    check_vocab(logits, model)
    if prefetched is not None and not isinstance(prefetched, Prefetched):
        raise ValueError(f"prefetched must be the .prefetched of a previous StepOutput (or None), "
                         f"got {type(prefetched).__name__}")
    checked = Prefix.from_cache(kv, seed, logits.shape[0], attention_mask, model)   # validates kv, mask, seeds
    # rows reach the prefix length + horizon, + 2 with prefetch's lead tokens
    fast = use_fast_engine(engine, model, int(checked.positions.max()) + horizon + 2)
    # the candidate sits at position L (the prefix length), its rollouts reach L + horizon - 1
    check_position_limit(model, int(checked.positions.max()) + horizon - 1 + (2 if fast and advance else 0),
                         "this step's lookahead", "use a shorter prompt or a smaller horizon")
    from .ops import choose
    which_topk = choose(logits.device, backend, "topk_support") if fast else "reference"
    logits = truncate(logits, top_k, top_p, min_p, which_topk)
    warn_if_expensive(logits, checked, cfg, backend)
    cache = EpicCache.from_cache(kv) if advance else kv      # copied at most once per decode
    prefix = checked if cache is kv else Prefix.view(cache, checked.mask, checked.seeds)
    transform = (lambda x, seq, tokens: truncate(x, top_k, top_p, min_p, which_topk)) if advance else None
    return run_step(logits, cache, prefix, model, cfg, fast=fast, backend=backend, advance=advance,
                    prefetched=prefetched, transform=transform)


__all__ = ["StepOutput", "sample_step", "run_step", "use_fast_engine", "warn_if_expensive", "ENGINES"]
