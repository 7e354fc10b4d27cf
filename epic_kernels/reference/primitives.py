"""Row-wise primitives of the reference: entropy, the rollout policy, keyed Gumbel-max, the first
prune, the Rao-Blackwellized and Monte Carlo estimators, and the score.

Readable first: computed in the accumulate dtype (``core.compute_dtype``: float32, float64 for
float64 input); randomness only from the keyed Philox streams of ``epic_kernels.philox``.
"""
from __future__ import annotations

import torch

from .. import philox
from ..core import PruneResult, compute_dtype, top_k_mask


def _on(device, *tensors):
    """The noise keys (seeds, positions, streams) on the logits' device."""
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors)


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
    return top_k_mask(logits, top_k)


def policy_log_probs(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """``log pi(. | prefix)`` of the rollout policy, in the compute dtype."""
    x = policy_logits(logits, top_k).to(compute_dtype(logits.dtype))
    return torch.log_softmax(x, dim=-1)


def gumbel_argmax(logits: torch.Tensor, seeds: torch.Tensor, stream, positions: torch.Tensor):
    """``argmax_v (logits_v + G_v)`` per row with keyed noise; the lower id wins a tie.

    Noise is drawn only where it can matter: every entry when a row is fully finite, else just the
    finite entries (a truncated policy): the result is the same, the cost much lower.
    """
    x = logits.to(compute_dtype(logits.dtype))
    seeds, positions, stream = _on(x.device, seeds, positions, stream)
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return torch.argmax(x + philox.noise(seeds, stream, positions, x.shape[-1]), dim=-1)
    width = int(finite.sum(-1).max())
    ids = torch.sort(torch.where(finite, torch.arange(x.shape[-1], device=x.device), x.shape[-1]), dim=-1).values[:, :width]
    valid = ids < x.shape[-1]                       # rows with fewer finite entries are padded
    ids = torch.where(valid, ids, 0)
    g = philox.noise_at(seeds, stream, positions, ids)
    perturbed = torch.where(valid, x.gather(1, ids) + g, torch.tensor(float("-inf"), dtype=x.dtype))
    return ids.gather(1, torch.argmax(perturbed, dim=-1, keepdim=True)).squeeze(1)


def perturbed_scores(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor):
    """Centered perturbed logits ``z = l - logsumexp(l) + G`` with step noise, ``[B, V]``."""
    x = logits.to(compute_dtype(logits.dtype))
    seeds, positions = _on(x.device, seeds, positions)
    g = philox.noise(seeds, philox.STEP_STREAM, positions, x.shape[-1]).to(x.dtype)
    return x - torch.logsumexp(x, dim=-1, keepdim=True) + g


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


def partial_sums(table: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """RB estimate of each candidate through its own known depth: ``table [N, k, K]``, ``depth [N]``.
    Row n is bit for bit ``rb_estimate(table[n:n+1], depth[n])``: the same sums in the same order,
    a row taking depth j's term only while ``j < depth[n]``."""
    K = table.shape[2]
    out = torch.zeros(table.shape[0], dtype=table.dtype, device=table.device)
    for j in range(int(depth.max()) if len(depth) else 0):
        level = table[:, j, 0].clone()
        for r in range(1, K):
            level = level + table[:, j, r]
        out = torch.where(depth > j, out + level / K, out)
    return out


def mc_estimate(log_probs: torch.Tensor) -> torch.Tensor:
    """Naive Monte Carlo lookahead entropy (paper eq. 45): ``-(1/K) sum_r log pi(y^(r)_{1..k})``.

    ``log_probs [N, k, K]`` holds ``log pi(y^(r)_j | x, i, y^(r)_{<j})`` of the sampled tokens.
    """
    return -log_probs.sum(1).mean(-1)


def score(z: torch.Tensor, alpha: float, entropy: torch.Tensor) -> torch.Tensor:
    """Entropy-aligned score ``s = z - alpha * H`` (the one formula every sampler uses)."""
    return z - alpha * entropy


