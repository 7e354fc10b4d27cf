"""Lookahead entropies of chosen tokens at many prefixes of one text, in a few batched calls.

The building block of alpha calibration: ``mu_p`` needs the entropy after each data token at its
own prefix, ``mu_alpha`` the entropies of model samples there. The text is run through the model
once; every (prefix, candidate) pair then forks from that single KV (no copies), and all pairs
advance one depth per model call.
"""
from __future__ import annotations

import torch

from .cache import EpicCache
from .core import EpicConfig, Prefix
from .validate import (cache_layers, check_config, check_input_ids, check_int, check_not_meta, check_position_limit,
                       model_vocab)


@torch.no_grad()
def lookahead_entropy(model, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                      candidates: torch.Tensor | None = None, horizon: int = 4, rollouts: int = 2,
                      seed: int = 0, rollout_top_k: int | None = None, backend: str | None = None):
    """Rao-Blackwellized lookahead entropy ``H_{t:t+k}`` of candidates after prefixes of one text.

    Parameters
    ----------
    model : causal LM whose attention runs through transformers' attention interface (Llama family).
    input_ids : int64 ``[T]`` or ``[1, T]``, one unpadded text.
    positions : int64 ``[P]``, prefix lengths ``t`` in ``[1, T]``; default every ``t`` in ``[1, T - 1]``.
    candidates : int64 ``[P]`` or ``[P, C]``, tokens placed at position ``t`` (after ``input_ids[:t]``);
        default the text's own next token ``input_ids[t]`` (then every ``t < T``).
    horizon, rollouts, rollout_top_k : as ``sample_step``; ``seed``: the text's sequence seed (rollout
        noise is keyed by it, the rollout index and the position, as in decoding).

    Returns
    -------
    float tensor shaped like ``candidates``.
    """
    from .engine.attention import fork_refusal
    from .engine.evaluator import Evaluator
    from .ops import choose

    cfg = EpicConfig(alpha=1.0, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k)
    check_config(cfg)
    check_int(seed, "seed", 0, 2**32 - 1)
    ids = torch.as_tensor(input_ids)
    check_not_meta(model, input_ids=ids, positions=positions, candidates=candidates)
    if ids.dim() == 2 and ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one text, [T] or [1, T], got shape {tuple(ids.shape)}; "
                         "call lookahead_entropy once per text")
    if ids.dim() not in (1, 2):
        raise ValueError(f"input_ids must be one text, [T] or [1, T], got shape {tuple(ids.shape)}")
    vocab = model_vocab(model)
    check_input_ids(ids.reshape(1, -1), vocab)
    ids = ids.reshape(1, -1).to(torch.int64)
    T = ids.shape[1]
    why = fork_refusal(model, T + horizon)
    if why is not None:
        raise ValueError(f"lookahead_entropy runs on the fast engine, which cannot run {type(model).__name__} "
                         f"exactly: {why}")
    if positions is None:
        positions = torch.arange(1, T)
    positions = torch.as_tensor(positions)
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"positions must be integers, got {positions.dtype}")
    positions = positions.to(torch.int64).reshape(-1)
    if len(positions) and (positions.min() < 1 or positions.max() > T):
        raise ValueError(f"positions must lie in [1, {T}]")
    if candidates is None:
        if len(positions) and positions.max() >= T:
            raise ValueError("the default candidates (the text's next tokens) need positions < T")
        candidates = ids[0, positions]
    candidates = torch.as_tensor(candidates)
    if candidates.dtype.is_floating_point or candidates.dtype == torch.bool:
        raise ValueError(f"candidates must be integer token ids, got {candidates.dtype}")
    candidates = candidates.to(torch.int64)
    if candidates.numel() and (int(candidates.min()) < 0 or (vocab is not None and int(candidates.max()) >= vocab)):
        raise ValueError(f"candidates must lie in [0, {vocab}) (the model's vocabulary), got values in "
                         f"[{int(candidates.min())}, {int(candidates.max())}]")
    # the text's forward feeds positions up to T - 1; a candidate at position t, its rollouts t + horizon - 1
    check_position_limit(model, max(T - 1, int(positions.max()) + horizon - 1 if len(positions) else 0),
                         "this lookahead", "use a shorter text, earlier positions or a smaller horizon")
    shape = candidates.shape
    if candidates.dim() == 1:
        candidates = candidates.view(-1, 1)
    if candidates.dim() != 2 or candidates.shape[0] != len(positions):
        raise ValueError(f"candidates must be [P] or [P, C] with P = {len(positions)}, got {tuple(shape)}")
    out = model(input_ids=ids, past_key_values=EpicCache(), use_cache=True)   # keeps every token
    layers = cache_layers(out.past_key_values)
    mask = torch.ones(1, T, dtype=torch.int64)
    prefix = Prefix(layers, mask, torch.tensor([T]), torch.tensor([seed], dtype=torch.int64))
    flat = candidates.flatten()
    pos = positions.repeat_interleave(candidates.shape[1])
    score_dtype = torch.float64 if out.logits.dtype == torch.float64 else torch.float32
    ev = Evaluator(model, prefix, torch.zeros_like(flat), flat, cfg, choose(ids.device, backend), score_dtype,
                   positions=pos, keep_logits=False)
    idx = torch.arange(len(flat))
    _, h = ev.run(idx, torch.full_like(idx, horizon))
    return h.view(shape)
