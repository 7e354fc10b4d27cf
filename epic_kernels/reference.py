"""Pure-PyTorch reference of EPIC: the oracle that every kernel and the fast path are tested against.

Readable first. Everything is computed in float32 (float64 when the model itself runs in float64),
row by row where that is clearer, and randomness comes only from the keyed Philox streams of
``epic_kernels.philox``. See ``docs/algorithm.md`` for the math and why ``lazy_sample`` returns the
same token as ``exhaustive_sample``.

Conventions
-----------
* ``logits [B, V]``: next-token logits after each sequence's prefix; ``-inf`` marks a token removed by
  truncation; every finite entry is a candidate.
* Score of candidate ``i``: ``s_i = z_i - alpha * H_i`` with ``z_i = l_i - logsumexp(l) + G_i`` and
  ``H_i`` the Rao-Blackwellized lookahead entropy (paper eq. 47).
* Ties are broken towards the lower token id, in every sampler and every backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import philox
from .validate import check_logits
from .rollout import Prefix, rollout_entropies

# --------------------------------------------------------------------------------------------- #
# Row-wise primitives                                                                           #
# --------------------------------------------------------------------------------------------- #


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 when the input already is float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and log-sum-exp of ``softmax(logits)`` per row; ``-inf`` entries have probability 0.

    ``H = -sum_v p_v log p_v`` with ``log p = l - lse`` (no cancellation for large logits).
    Returns two tensors ``[N]`` in the compute dtype.
    """
    x = logits.to(compute_dtype(logits.dtype))
    lse = torch.logsumexp(x, dim=-1)
    log_p = x - lse.unsqueeze(-1)
    p = torch.exp(log_p)
    return -torch.where(p > 0, p * log_p, torch.zeros_like(x)).sum(-1), lse   # 0 * -inf := 0


def policy_logits(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """The rollout policy's logits: the model's, with all but the ``top_k`` largest set to ``-inf``.

    Exactly ``top_k`` entries stay (ties at the boundary go to the lower token id), so the policy's
    support never exceeds ``top_k`` and ``log(top_k)`` bounds its entropy.
    """
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :top_k]
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, True)
    return logits.masked_fill(~keep, float("-inf"))


def policy_log_probs(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """``log pi(. | prefix)`` of the rollout policy, in the compute dtype."""
    x = policy_logits(logits, top_k).to(compute_dtype(logits.dtype))
    return torch.log_softmax(x, dim=-1)


def entropy_bound(vocab: int, top_k: int | None) -> float:
    """``log |supp pi|``: the largest entropy one depth of the rollout policy can have."""
    return math.log(min(vocab, top_k) if top_k else vocab)


def gumbel_argmax(logits: torch.Tensor, seeds: torch.Tensor, stream, positions: torch.Tensor):
    """``argmax_v (logits_v + G_v)`` per row with keyed noise; the lower id wins a tie.

    Noise is drawn only where it can matter: every entry when a row is fully finite, else just the
    finite entries (a truncated policy): the result is the same, the cost much lower.
    """
    x = logits.to(compute_dtype(logits.dtype))
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return torch.argmax(x + philox.noise(seeds, stream, positions, x.shape[-1]), dim=-1)
    width = int(finite.sum(-1).max())
    ids = torch.sort(torch.where(finite, torch.arange(x.shape[-1]), x.shape[-1]), dim=-1).values[:, :width]
    valid = ids < x.shape[-1]                       # rows with fewer finite entries are padded
    ids = torch.where(valid, ids, 0)
    g = philox.noise_at(seeds, stream, positions, ids)
    perturbed = torch.where(valid, x.gather(1, ids) + g, torch.tensor(float("-inf"), dtype=x.dtype))
    return ids.gather(1, torch.argmax(perturbed, dim=-1, keepdim=True)).squeeze(1)


def perturbed_scores(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor):
    """Centered perturbed logits ``z = l - logsumexp(l) + G`` with step noise, ``[B, V]``."""
    x = logits.to(compute_dtype(logits.dtype))
    g = philox.noise(seeds, philox.STEP_STREAM, positions, x.shape[-1]).to(x.dtype)
    return x - torch.logsumexp(x, dim=-1, keepdim=True) + g


class PruneResult(NamedTuple):
    """Output of ``gumbel_topk_prune`` (every backend returns exactly this layout).

    Survivors are compacted per row in CSR form, ascending token id within a row: row ``b`` owns
    ``ids[offsets[b]:offsets[b + 1]]`` and ``scores[...]``; ``counts[b] = offsets[b+1] - offsets[b]``.
    """

    ids: torch.Tensor           # int64 [S], surviving token ids
    scores: torch.Tensor        # [S], their perturbed scores z (float32; float64 for float64 logits)
    counts: torch.Tensor        # int64 [B]
    offsets: torch.Tensor       # int64 [B + 1]
    front_ids: torch.Tensor     # int64 [B], argmax of z (lower id on ties)
    front_scores: torch.Tensor  # [B], max of z
    topk_ids: torch.Tensor      # int64 [B, top_k], ids of the top_k largest z, descending (-1 pad)
    topk_scores: torch.Tensor   # [B, top_k], their z (-inf pad)
    lse: torch.Tensor           # [B], logsumexp of the logits (the centering term)


def gumbel_topk_prune(logits, seeds, positions, width, top_k: int) -> PruneResult:
    """Perturb with step noise, find each row's front-runner, keep tokens within ``width`` of it.

    Parameters
    ----------
    logits : ``[B, V]`` float; ``-inf`` entries are never survivors.
    seeds, positions : int64 ``[B]``; noise key of entry v is ``(seeds[b], STEP, positions[b], v)``.
    width : float or ``[B]`` tensor >= 0; survivors satisfy ``z_v >= max_u z_u - width``.
    top_k : int >= 1, how many of the best perturbed ids to return per row.
    """
    z = perturbed_scores(logits, seeds, positions)
    lse = torch.logsumexp(logits.to(z.dtype), dim=-1)
    front_scores = z.max(dim=-1).values
    front_ids = torch.argmax(z, dim=-1)                # first maximum: the lower id wins a tie
    width = torch.as_tensor(width, dtype=z.dtype).expand(z.shape[0])
    keep = torch.isfinite(z) & (z >= (front_scores - width).unsqueeze(-1))
    rows, ids = torch.nonzero(keep, as_tuple=True)     # row-major: ascending id within a row
    counts = keep.sum(-1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    kk = min(top_k, z.shape[-1])
    order = torch.sort(z, dim=-1, descending=True, stable=True)
    topk_scores, topk_ids = order.values[:, :kk], order.indices[:, :kk]
    topk_ids = torch.where(torch.isfinite(topk_scores), topk_ids, torch.full_like(topk_ids, -1))
    if kk < top_k:
        pad = top_k - kk
        topk_ids = torch.cat([topk_ids, topk_ids.new_full((z.shape[0], pad), -1)], dim=1)
        topk_scores = torch.cat([topk_scores, topk_scores.new_full((z.shape[0], pad), float("-inf"))], dim=1)
    return PruneResult(ids, z[rows, ids], counts, offsets, front_ids, front_scores,
                       topk_ids, topk_scores, lse)


def rb_estimate(table: torch.Tensor, depth: int | None = None) -> torch.Tensor:
    """Rao-Blackwellized lookahead entropy (paper eq. 47) from a per-depth entropy table.

    ``table [N, k, K]`` holds ``H(pi(. | x, i, y^(r)_{<j}))`` at depth ``j`` for rollout ``r``.
    Returns ``sum_{j<=depth} (1/K) sum_r table[:, j, r]``, summed in a fixed order so that a partial
    sum is bit-for-bit a prefix of the full one.
    """
    depth = table.shape[1] if depth is None else depth
    total = torch.zeros(table.shape[0], dtype=table.dtype, device=table.device)
    for j in range(depth):
        level = table[:, j, 0].clone()
        for r in range(1, table.shape[2]):
            level = level + table[:, j, r]
        total = total + level / table.shape[2]
    return total


def mc_estimate(log_probs: torch.Tensor) -> torch.Tensor:
    """Naive Monte Carlo lookahead entropy (paper eq. 45): ``-(1/K) sum_r log pi(y^(r)_{1..k})``.

    ``log_probs [N, k, K]`` holds ``log pi(y^(r)_j | x, i, y^(r)_{<j})`` of the sampled tokens.
    """
    return -log_probs.sum(1).mean(-1)


def score(z: torch.Tensor, alpha: float, entropy: torch.Tensor) -> torch.Tensor:
    """Entropy-aligned score ``s = z - alpha * H`` (the one formula every sampler uses)."""
    return z - alpha * entropy


# --------------------------------------------------------------------------------------------- #
# Samplers                                                                                      #
# --------------------------------------------------------------------------------------------- #


@dataclass
class SampleStats:
    """What a sampling step cost. Per-row counts are int64 tensors ``[B]``."""

    survivors: torch.Tensor            # candidates left after the first (admissible-window) prune
    evaluated_depth1: torch.Tensor     # candidates whose depth-1 entropy was computed
    evaluated_deeper: torch.Tensor     # candidate evaluations that went deeper than depth 1
    forward_calls: int = 0             # model calls for the whole batch
    forward_tokens: int = 0            # tokens fed to the model for the whole batch
    extra: dict = field(default_factory=dict)


@dataclass
class SampleResult:
    tokens: torch.Tensor               # int64 [B]
    stats: SampleStats
    entropy: torch.Tensor | None = None   # the winner's lookahead-entropy estimate (NaN if never computed)


@dataclass
class EpicConfig:
    """The parameters of one EPIC step (validated by ``validate.check_config``)."""

    alpha: float
    horizon: int = 4
    rollouts: int = 2
    rollout_top_k: int | None = None
    block_size: int = 4


@torch.no_grad()
def exhaustive_sample(logits, prefix: Prefix, model, cfg: EpicConfig) -> SampleResult:
    """The oracle: estimate ``H_i`` for every finite token, return ``argmax_i z_i - alpha * H_i``."""
    check_logits(logits, prefix.batch)
    z = perturbed_scores(logits, prefix.seeds, prefix.positions)
    rows, cands = torch.nonzero(torch.isfinite(logits), as_tuple=True)
    depths = torch.full_like(cands, cfg.horizon)
    table, _, calls, toks = rollout_entropies(model, prefix, rows, cands, depths, cfg)
    s = torch.full_like(z, float("-inf"))
    h_all = torch.full_like(z, float("nan"))
    h_all[rows, cands] = rb_estimate(table.to(z.dtype))
    s[rows, cands] = score(z[rows, cands], cfg.alpha, h_all[rows, cands])
    tokens = torch.argmax(s, dim=-1)
    n = torch.isfinite(logits).sum(-1)
    stats = SampleStats(n, n.clone(), n.clone() if cfg.horizon > 1 else torch.zeros_like(n), calls, toks)
    return SampleResult(tokens, stats, h_all.gather(1, tokens.view(-1, 1)).squeeze(1))


def rollout_horizon(gap: float, known: int, horizon: int, width_per_depth: float) -> int:
    """GetRolloutHorizon: how deep to evaluate a candidate in this round.

    A candidate evaluated to depth ``h`` still has ``(horizon - h) * width_per_depth`` of score
    uncertainty (``width_per_depth = |alpha| * log|supp pi|``). It can only be certified as the winner
    once that uncertainty fits in the ``gap`` between its upper bound and the threshold (the best upper
    bound outside its block), so evaluate to the smallest such depth, at least one deeper than the
    depth already known, capped at ``horizon``.
    """
    if gap <= 0 or width_per_depth <= 0:
        return horizon
    if math.isinf(gap):
        return min(horizon, known + 1)
    need = horizon - math.floor(gap / width_per_depth)
    return int(min(horizon, max(known + 1, need)))


def _bounds(z, alpha, partial, depth, horizon, bound):
    """Score interval of candidates whose RB estimate is known through ``depth`` (``partial``)."""
    exact = depth >= horizon
    slack = 1e-5 * (1.0 + partial.abs())           # float rounding must never make a bound inadmissible
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
    k, bound = cfg.horizon, entropy_bound(logits.shape[-1], cfg.rollout_top_k) * (1 + 1e-6) + 1e-6
    width = abs(cfg.alpha) * k * bound
    z_all = perturbed_scores(logits, prefix.seeds, prefix.positions)
    B = logits.shape[0]
    tokens = torch.empty(B, dtype=torch.int64)
    winner_h = torch.full((B,), float("nan"), dtype=z_all.dtype)
    stats = SampleStats(*(torch.zeros(B, dtype=torch.int64) for _ in range(3)))
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
            partial = _partial_sums(st["table"], st["depth"])
            lb, ub = _bounds(st["z"], cfg.alpha, partial, st["depth"], k, bound)
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


def _partial_sums(table, depth):
    """RB estimate of each candidate through its own known depth."""
    out = torch.zeros(table.shape[0], dtype=table.dtype)
    for d in depth.unique().tolist():
        rows = depth == d
        out[rows] = rb_estimate(table[rows], d)
    return out


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
