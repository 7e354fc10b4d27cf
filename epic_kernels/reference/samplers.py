"""The reference samplers: the exhaustive oracle and the entropy-aware lazy Gumbel-max.

Readable first: row by row where that is clearer. ``lazy_sample`` returns ``exhaustive_sample``'s
token for the same seeds (docs/algorithm.md explains why); every engine is tested against them.

Conventions
-----------
* ``logits [B, V]``: next-token logits after each sequence's prefix; ``-inf`` marks a token removed by
  truncation; every finite entry is a candidate.
* Score of candidate ``i``: ``s_i = z_i - alpha * H_i`` with ``z_i = l_i - logsumexp(l) + G_i`` and
  ``H_i`` the Rao-Blackwellized lookahead entropy (paper eq. 47).
* Ties are broken towards the lower token id, in every sampler and every backend.
"""
from __future__ import annotations

import torch

from ..core import ENTROPY_SLACK, EpicConfig, Prefix, SampleResult, StepStats, admissible_bound, rollout_horizon
from ..validate import check_logits
from .primitives import partial_sums, perturbed_scores, rb_estimate, score
from .rollout import rollout_entropies


@torch.no_grad()
def exhaustive_sample(logits, prefix: Prefix, model, cfg: EpicConfig) -> SampleResult:
    """The oracle: estimate ``H_i`` for every finite token, return ``argmax_i z_i - alpha * H_i``."""
    check_logits(logits, prefix.batch)
    z = perturbed_scores(logits, prefix.seeds, prefix.positions).cpu()      # the search runs on the CPU
    rows, cands = torch.nonzero(torch.isfinite(z), as_tuple=True)
    depths = torch.full_like(cands, cfg.horizon)
    table, _, calls, toks = rollout_entropies(model, prefix, rows, cands, depths, cfg)
    s = torch.full_like(z, float("-inf"))
    h_all = torch.full_like(z, float("nan"))
    h_all[rows, cands] = rb_estimate(table.to(z.dtype))
    s[rows, cands] = score(z[rows, cands], cfg.alpha, h_all[rows, cands])
    tokens = torch.argmax(s, dim=-1)
    n = torch.isfinite(z).sum(-1)
    stats = StepStats(n, n.clone(), n.clone() if cfg.horizon > 1 else torch.zeros_like(n), calls, toks)
    return SampleResult(tokens, stats, h_all.gather(1, tokens.view(-1, 1)).squeeze(1))


def score_bounds(z, alpha, partial, depth, horizon, bound):
    """Score interval of candidates whose RB estimate is known through ``depth`` (``partial``)."""
    exact = depth >= horizon
    slack = ENTROPY_SLACK * (1.0 + partial.abs())  # float rounding must never make a bound inadmissible
    h_lo = torch.where(exact, partial, partial - slack)
    h_hi = torch.where(exact, partial, partial + (horizon - depth).to(partial.dtype) * bound + slack)
    lo_a, hi_a = score(z, alpha, h_hi), score(z, alpha, h_lo)       # alpha >= 0
    return (lo_a, hi_a) if alpha >= 0 else (hi_a, lo_a)


def _certified(lb, ub, ids):
    """Index of the candidate whose lower bound beats every other upper bound (ties: lower id), or -1."""
    best = max(range(len(ids)), key=lambda n: (float(lb[n]), -int(ids[n])))
    for d in range(len(ids)):
        if d != best and not (lb[best] > ub[d] or (lb[best] == ub[d] and ids[best] < ids[d])):
            return -1
    return best


@torch.no_grad()
def lazy_sample(logits, prefix: Prefix, model, cfg: EpicConfig) -> SampleResult:
    """Entropy-aware lazy Gumbel-max (paper Algorithm 1): the exhaustive sampler's token, cheaply.

    1. Admissible window: every candidate's entropy lies in ``[0, k * U]`` (``U = log|supp pi|``), so
       only tokens with ``z_i >= max_j z_j - |alpha| k U`` can win. One left: it wins, no forward.
    2. Depth 1 for all survivors of all rows in one batched forward; bounds tighten to
       ``[H1_i, H1_i + (k-1) U]``; prune again.
    3. Best first: each round takes, per row, the ``block_size`` unfinished candidates with the highest
       upper bounds, evaluates each to the depth ``rollout_horizon`` asks for (one batched call per
       depth for every row), tightens, prunes. A row stops when one candidate's lower bound beats
       every other candidate's upper bound; that candidate is ``argmax_i s_i``.
    """
    check_logits(logits, prefix.batch)
    k, bound = cfg.horizon, admissible_bound(logits.shape[-1], cfg.rollout_top_k)
    width = abs(cfg.alpha) * k * bound
    z_all = perturbed_scores(logits, prefix.seeds, prefix.positions).cpu()  # the search runs on the CPU
    B = logits.shape[0]
    tokens = torch.empty(B, dtype=torch.int64)
    winner_h = torch.full((B,), float("nan"), dtype=z_all.dtype)
    stats = StepStats(*(torch.zeros(B, dtype=torch.int64) for _ in range(3)))
    state = {}                 # row -> dict(ids, z, table, depth)
    for b in range(B):         # 1. first prune: window below the front-runner
        zb = z_all[b]
        ids = torch.nonzero(torch.isfinite(zb)).flatten()
        keep = ids[zb[ids] >= zb[ids].max() - width] if width > 0 else ids[zb[ids] == zb[ids].max()]
        stats.survivors[b] = len(keep)
        if len(keep) == 1:
            tokens[b] = keep[0]
            continue
        state[b] = dict(ids=keep, z=zb[keep], table=torch.zeros(len(keep), k, cfg.rollouts, dtype=zb.dtype),
                        depth=torch.zeros(len(keep), dtype=torch.int64))
    first = True
    while state:
        requests = []          # (row, candidate slot, depth)
        for b, st in list(state.items()):
            partial = partial_sums(st["table"], st["depth"])
            lb, ub = score_bounds(st["z"], cfg.alpha, partial, st["depth"], k, bound)
            if not first:
                alive = ub >= lb.max()
                for key in ("ids", "z", "table", "depth"):
                    st[key] = st[key][alive]
                lb, ub, partial = lb[alive], ub[alive], partial[alive]
                win = _certified(lb, ub, st["ids"])
                if win >= 0:
                    tokens[b], winner_h[b] = st["ids"][win], partial[win]
                    del state[b]
                    continue
            if first:          # 2. depth 1 for every survivor
                requests += [(b, n, 1) for n in range(len(st["ids"]))]
                stats.evaluated_depth1[b] += len(st["ids"])
                continue
            order = sorted(range(len(st["ids"])), key=lambda n: (-float(ub[n]), int(st["ids"][n])))
            todo = [n for n in order if st["depth"][n] < k]
            block = todo[:cfg.block_size]
            rest = [n for n in order if n not in block]
            threshold = float(ub[rest[0]]) if rest else float("-inf")
            for n in block:    # 3. best-first block with adaptive horizon
                h = rollout_horizon(float(ub[n]) - threshold, int(st["depth"][n]), k, abs(cfg.alpha) * bound)
                requests.append((b, n, h))
                stats.evaluated_deeper[b] += int(h > 1)
        first = False
        if requests:
            _evaluate(requests, state, prefix, model, cfg, stats)
    return SampleResult(tokens, stats, winner_h)


def _evaluate(requests, state, prefix, model, cfg, stats):
    """Run every request of every row in shared batched forward calls; store the per-depth entropies."""
    rows = torch.tensor([b for b, _, _ in requests])
    cands = torch.tensor([int(state[b]["ids"][n]) for b, n, _ in requests])
    depths = torch.tensor([h for _, _, h in requests])
    table, _, calls, toks = rollout_entropies(model, prefix, rows, cands, depths, cfg)
    stats.forward_calls += calls
    stats.forward_tokens += toks
    for m, (b, n, h) in enumerate(requests):
        st = state[b]
        st["table"][n, :h] = table[m, :h].to(st["table"].dtype)
        st["depth"][n] = max(int(st["depth"][n]), h)
