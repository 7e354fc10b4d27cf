"""A naive batched EPIC sampler: the baseline the fast engine is measured against (``bench_model.py``,
table ``decode_steps``, which also checks at every step that it returns the fast engine's tokens).

It is exact (same target distribution, same keyed noise, hence the library's tokens for the same
seeds) but does what a first implementation would do:

1. admissible window: keep candidates with ``z_i >= max_j z_j - |alpha| k U`` (one left: it wins);
2. depth 1: ``copy.deepcopy`` the Hugging Face cache and ``batch_select_indices`` one row per
   candidate, one batched forward of every candidate of every sequence;
3. one prune with the depth-1 bounds (the reference's ``score_bounds``);
4. every candidate still alive goes to FULL depth: deepcopy the depth-1 cache again,
   ``batch_select_indices`` each row ``K`` times (one per rollout), one batched forward per depth;
   no best-first order, no adaptive horizon, no early stop;
5. argmax of the exact scores ``score(z, alpha, rb_estimate(table))`` (lower id on ties).

The randomness is the library's (``reference.perturbed_scores`` for the step noise,
``reference.gumbel_argmax`` with stream ``1 + r`` for rollout r), so a candidate's estimate is the
one the reference computes and the argmax is the exhaustive sampler's. With ``advance=True`` it also
returns the next logits and cache, from the winner's depth-1 row when every winner had one, else by
one plain forward of the winners (the forward any decoding loop makes; counted apart, as the fast
engine does).

A helper module of the suites (not collected: only ``bench_*.py`` files are).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from epic_kernels.core import Prefix, StepStats, admissible_bound
from epic_kernels.reference import (gumbel_argmax, perturbed_scores, policy_logits, rb_estimate, score,
                                    score_bounds, softmax_entropy)
from epic_kernels.truncation import truncate


@dataclass
class NaiveStep:
    tokens: torch.Tensor                 # int64 [B]
    stats: StepStats                     # forward_calls / forward_tokens: EPIC's own work only
    entropy: torch.Tensor                # [B] winner's estimate (NaN when it won without a forward)
    next_logits: torch.Tensor | None = None
    kv: object | None = None
    attention_mask: torch.Tensor | None = None


def _forward(model, ids, cache, mask, positions):
    out = model(input_ids=ids.view(-1, 1), attention_mask=mask, position_ids=positions.view(-1, 1),
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1, :]


@torch.no_grad()
def naive_sample(logits: torch.Tensor, kv, model, *, alpha: float, horizon: int = 4, rollouts: int = 2,
                 seed=0, attention_mask: torch.Tensor | None = None, rollout_top_k: int | None = None,
                 top_k: int | None = None, advance: bool = False) -> NaiveStep:
    """One exact EPIC step the naive way (see the module docstring). Arguments as ``sample_step``;
    ``kv`` (a transformers ``DynamicCache``, batch B) is never modified."""
    B, V = logits.shape
    prefix = Prefix.from_cache(kv, seed, B, attention_mask, model)
    mask, pos, seeds = prefix.mask, prefix.positions, prefix.seeds
    logits = truncate(logits, top_k)
    k, K = horizon, rollouts
    bound = admissible_bound(V, rollout_top_k)                         # as reference.lazy_sample
    width = abs(alpha) * k * bound
    z = perturbed_scores(logits, seeds, pos)
    front = z.max(-1, keepdim=True).values
    window = torch.isfinite(z) & ((z >= front - width) if width > 0 else (z == front))
    rows, cands = torch.nonzero(window, as_tuple=True)               # ascending id within a row
    counts = window.sum(-1)
    tokens = torch.empty(B, dtype=torch.int64)
    entropy = torch.full((B,), float("nan"), dtype=z.dtype)
    evaluated_deeper = torch.zeros(B, dtype=torch.int64)
    stats = StepStats(counts.clone(), torch.zeros(B, dtype=torch.int64), evaluated_deeper)
    single = counts == 1
    tokens[single] = cands[single[rows]]
    multi = ~single[rows]
    r_idx, c_ids = rows[multi], cands[multi]                          # candidates needing a forward
    depth1_logits = cache1 = None
    cand_of_row = torch.full((B,), -1, dtype=torch.int64)             # winner's depth-1 row
    if len(r_idx):
        stats.evaluated_depth1 = torch.bincount(r_idx, minlength=B)
        # ---- depth 1: a full copy of the cache, then one row per candidate -----------------------
        cache1 = copy.deepcopy(kv)
        cache1.batch_select_indices(r_idx)
        mask1 = torch.cat([mask[r_idx], torch.ones_like(mask[r_idx, :1])], 1)
        depth1_logits = _forward(model, c_ids, cache1, mask1, pos[r_idx])
        stats.forward_calls, stats.forward_tokens = 1, len(c_ids)
        pol = policy_logits(depth1_logits, rollout_top_k)
        ent, _ = softmax_entropy(pol)
        N = len(c_ids)
        table = torch.zeros(N, k, K, dtype=z.dtype)
        table[:, 0, :] = ent.to(z.dtype).view(-1, 1)
        zc = z[r_idx, c_ids]
        # ---- one prune with the depth-1 bounds ---------------------------------------------------
        depth = torch.ones(N, dtype=torch.int64)
        partial = rb_estimate(table, 1)
        lb, ub = score_bounds(zc, alpha, partial, depth, k, bound)
        best_lb = torch.full((B,), float("-inf"), dtype=lb.dtype).scatter_reduce(0, r_idx, lb, "amax")
        alive = ub >= best_lb[r_idx]
        n_alive = torch.bincount(r_idx[alive], minlength=B)
        deep = alive & (n_alive[r_idx] > 1) & (k > 1)
        d_idx = deep.nonzero().flatten()
        evaluated_deeper += torch.bincount(r_idx[d_idx], minlength=B)
        # ---- every remaining candidate to full depth, K rollouts each -----------------------------
        if len(d_idx):
            rep = d_idx.repeat_interleave(K)
            roll = torch.arange(K).repeat(len(d_idx))
            cache = copy.deepcopy(cache1)
            cache.batch_select_indices(rep)
            rmask, rpos, rseeds = mask1[rep], pos[r_idx[rep]], seeds[r_idx[rep]]
            y = gumbel_argmax(pol[rep], rseeds, 1 + roll, rpos + 1)
            for j in range(1, k):
                rmask = torch.cat([rmask, torch.ones_like(rmask[:, :1])], 1)
                out = _forward(model, y, cache, rmask, rpos + j)
                stats.forward_calls += 1
                stats.forward_tokens += len(y)
                p = policy_logits(out, rollout_top_k)
                e, _ = softmax_entropy(p)
                table[rep, j, roll] = e.to(z.dtype)
                if j + 1 < k:
                    y = gumbel_argmax(p, rseeds, 1 + roll, rpos + j + 1)
        # ---- argmax of the exact scores over the alive candidates ---------------------------------
        h = rb_estimate(table, k)
        s = torch.where(alive, score(zc, alpha, torch.where(deep, h, partial)),
                        torch.full_like(zc, float("-inf")))
        full = torch.full((B, V), float("-inf"), dtype=s.dtype)
        full[r_idx, c_ids] = s
        hit = (~single).nonzero().flatten()
        win = torch.argmax(full[hit], dim=-1)                        # first maximum: lower id
        tokens[hit] = win
        # depth-1 row of each winner (row-major order, so a lookup by (row, id))
        key = r_idx * V + c_ids
        cand_of_row[hit] = torch.searchsorted(key, hit * V + win)
        hw = cand_of_row[hit]
        entropy[hit] = torch.where(deep[hw], h[hw], partial[hw]).to(entropy.dtype)
    out = NaiveStep(tokens, stats, entropy)
    if not advance:
        return out
    next_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    if bool((cand_of_row >= 0).all()):       # every winner had a depth-1 forward: reuse it
        new_kv = cache1
        new_kv.batch_select_indices(cand_of_row)
        out.next_logits = depth1_logits[cand_of_row]
        out.stats.forwards_saved = B
    else:                                    # the plain loop's forward
        new_kv = copy.deepcopy(kv)
        out.next_logits = _forward(model, tokens, new_kv, next_mask, pos)
        out.stats.finish_calls, out.stats.finish_tokens = 1, B
    out.kv, out.attention_mask = new_kv, next_mask
    return out
