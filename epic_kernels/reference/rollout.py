"""Reference rollouts: per-depth rollout-policy entropies of candidates, by plain batched forwards.

This is the simple, copying implementation the reference samplers use: the prefix KV of every
candidate row is gathered into a fresh ``DynamicCache`` (a copy), then the candidate and its rollout
tokens are fed one depth at a time, every request of every sequence in the same model call.
The fast engine (``epic_kernels.engine``) produces the same numbers without the copies.
``prefix`` is a ``core.Prefix`` (its ``layers`` are the cache's ``(keys, values)``).
"""
from __future__ import annotations

import torch

from ..core import EpicConfig, Prefix
from ..validate import cache_layers
from .primitives import gumbel_argmax, policy_logits, softmax_entropy


def select_rows(layers, index: torch.Tensor):
    """A new ``DynamicCache`` holding rows ``index`` of ``layers`` (copies)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k[index], v[index]) for k, v in layers])


@torch.no_grad()
def rollout_entropies(model, prefix: Prefix, rows, cands, depths, cfg: EpicConfig):
    """Per-depth entropies of the rollout policy after ``prefix[rows] + cands``.

    Parameters
    ----------
    model : causal LM with the Hugging Face call convention.
    prefix : Prefix of the B sequences.
    rows, cands, depths : int64 ``[N]``: request n evaluates token ``cands[n]`` after sequence
        ``rows[n]`` through depth ``depths[n]`` (1 <= depth <= cfg.horizon).
    cfg : EpicConfig (horizon, rollouts, rollout_top_k).

    Returns
    -------
    table : ``[N, horizon, K]``, ``H(pi(. | x, cand, y^(r)_{<j}))`` at depth j (0 beyond ``depths[n]``).
    log_probs : ``[N, horizon, K]``, ``log pi(y^(r)_j | ...)`` of each sampled rollout token.
    calls, tokens : model calls made and tokens fed.
    """
    n_req, k, K = len(rows), cfg.horizon, cfg.rollouts
    cache = select_rows(prefix.layers, rows)
    req = torch.arange(n_req)                     # which request each model row serves
    roll = torch.zeros(n_req, dtype=torch.int64)  # which rollout it follows (depth >= 2)
    mask, pos, seeds = prefix.mask[rows], prefix.positions[rows], prefix.seeds[rows]
    device = prefix.device
    ids = cands.view(-1, 1)
    table = log_probs = None
    calls = tokens = 0
    for j in range(int(depths.max())):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=(pos + j).view(-1, 1).to(device), past_key_values=cache, use_cache=True)
        calls, tokens = calls + 1, tokens + ids.numel()
        logits = policy_logits(out.logits[:, -1, :], cfg.rollout_top_k)
        ent = softmax_entropy(logits)[0].cpu()      # the tables live on the CPU, the logits on the model's device
        if table is None:
            table = torch.zeros(n_req, k, K, dtype=ent.dtype)
            log_probs = torch.zeros_like(table)
        if j == 0:                                # depth 1 is shared by every rollout: fan out now
            table[:, 0, :] = ent.view(-1, 1)
            fan = torch.arange(n_req).repeat_interleave(K)
            req, roll = fan, torch.arange(K).repeat(n_req)
            logits, mask, pos, seeds = logits[fan], mask[fan], pos[fan], seeds[fan]
        else:
            table[req, j, roll] = ent
            fan = torch.arange(len(req))
        y = gumbel_argmax(logits, seeds, 1 + roll, pos + j + 1)   # rollout noise, keyed per rollout
        lp = torch.log_softmax(logits.to(ent.dtype), dim=-1)
        log_probs[req, j, roll] = lp.gather(1, y.view(-1, 1)).squeeze(1).cpu()
        y = y.cpu()
        keep = depths[req] > j + 1
        if not bool(keep.any()):
            break
        cache = select_rows(cache_layers(cache), fan[keep])
        req, roll, mask, pos, seeds = req[keep], roll[keep], mask[keep], pos[keep], seeds[keep]
        ids = y[keep].view(-1, 1)
    return table, log_probs, calls, tokens


__all__ = ["rollout_entropies", "select_rows"]
