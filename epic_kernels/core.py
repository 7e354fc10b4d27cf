"""The concepts every part of epic_kernels shares, in one place: the step's configuration, the
prefix a step samples after, what a step returns and what it cost, the accumulate dtype, the
rollout policy's support and entropy bound, and the float slack that keeps every bound admissible.

The reference (``epic_kernels.reference``), the ops (``epic_kernels.ops``) and the engine
(``epic_kernels.engine``) import these; nothing here imports them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import defaults

# --------------------------------------------------------------------------------------------- #
# Slack. Every entropy is computed in floating point; a bound that float rounding made a hair too #
# tight could certify the wrong winner, so each bound is widened by a little more than rounding  #
# can move it. The C++ candidate manager receives the inflated bound from Python and uses the    #
# same two relative slacks (csrc/cpu/candidate_manager.cpp mirrors these constants).             #
# --------------------------------------------------------------------------------------------- #
BOUND_REL_SLACK = 1e-6      # U = log|supp pi| is inflated by this much (relative) ...
BOUND_ABS_SLACK = 1e-6      # ... plus this much (absolute)
ENTROPY_SLACK = 1e-5        # a partial estimate's interval widens by this * (1 + |partial|)
SCORE_SLACK = 1e-6          # score bounds widen by this * (1 + |z| + |alpha| (|partial| + k U))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulate dtype of every reduction: float32, or float64 when the input is float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def entropy_bound(vocab: int, top_k: int | None) -> float:
    """``log |supp pi|``: the largest entropy one depth of the rollout policy can have."""
    return math.log(min(vocab, top_k) if top_k else vocab)


def admissible_bound(vocab: int, top_k: int | None) -> float:
    """``entropy_bound`` inflated by the float slack: the per-depth ``U`` every sampler uses."""
    return entropy_bound(vocab, top_k) * (1 + BOUND_REL_SLACK) + BOUND_ABS_SLACK


def window(alpha: float, horizon: int, vocab: int, top_k: int | None) -> float:
    """Width of the admissible window of the first prune: ``|alpha| * k * U``."""
    return abs(alpha) * horizon * admissible_bound(vocab, top_k)


def rollout_horizon(gap: float, known: int, horizon: int, width_per_depth: float) -> int:
    """GetRolloutHorizon: how deep to evaluate a candidate in this round.

    A candidate evaluated to depth ``h`` still has ``(horizon - h) * width_per_depth`` of score
    uncertainty (``width_per_depth = |alpha| * U``). It can only be certified as the winner once that
    uncertainty fits in the ``gap`` between its upper bound and the threshold (the best upper bound
    outside its block), so evaluate to the smallest such depth, at least one deeper than the depth
    already known, capped at ``horizon``.
    """
    if gap <= 0 or width_per_depth <= 0:
        return horizon
    if math.isinf(gap):
        return min(horizon, known + 1)
    need = horizon - math.floor(gap / width_per_depth)
    return int(min(horizon, max(known + 1, need)))


def top_k_mask(logits: torch.Tensor, k: int | None, backend: str = "reference") -> torch.Tensor:
    """``logits [N, V]`` with all but each row's ``k`` largest entries set to ``-inf`` (ties at the
    boundary to the lower id: the rollout policy's and the top-k truncation's support, the op
    ``ops.topk_support``; ``backend`` from ``ops.dispatch.choose``, the reference by default)."""
    from .ops.topk_support import topk_support_impl

    if k is None or k >= logits.shape[-1]:
        return logits
    vals, ids = topk_support_impl(logits, k, backend)
    return torch.full_like(logits, float("-inf")).scatter_(-1, ids, vals)


# --------------------------------------------------------------------------------------------- #
# Configuration, prefix, results                                                                #
# --------------------------------------------------------------------------------------------- #


class PruneResult(NamedTuple):
    """Output of the ``gumbel_topk_prune`` op (every backend returns exactly this layout).

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

    def row(self, n: int) -> "PruneResult":
        """Row ``n`` as a one-row result."""
        lo, hi = int(self.offsets[n]), int(self.offsets[n + 1])
        return PruneResult(self.ids[lo:hi], self.scores[lo:hi], self.counts[n:n + 1],
                           torch.tensor([0, hi - lo], dtype=torch.int64), self.front_ids[n:n + 1],
                           self.front_scores[n:n + 1], self.topk_ids[n:n + 1], self.topk_scores[n:n + 1],
                           self.lse[n:n + 1])


@dataclass
class EpicConfig:
    """The parameters of one EPIC step (validated by ``validate.check_config``)."""

    alpha: float
    horizon: int = defaults.HORIZON
    rollouts: int = defaults.ROLLOUTS
    rollout_top_k: int | None = None
    block_size: int = defaults.BLOCK_SIZE
    max_rows: int | None = defaults.MAX_ROWS   # rows per model call and kept depth-1 logits (None: no cap)


@dataclass
class Prefix:
    """The B prefixes a step samples after. Tensors are the cache's own (views, never copies).

    layers : per layer ``(keys, values)``, each ``[B, kv_heads, L, head_dim]`` (left padded).
    mask : int64 ``[B, L]``, 1 on real tokens, 0 on padding.
    positions : int64 ``[B]``, each sequence's own length (the position of the token being sampled).
    seeds : int64 ``[B]``, the per-sequence noise keys.
    """

    layers: list
    mask: torch.Tensor
    positions: torch.Tensor
    seeds: torch.Tensor

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def device(self) -> torch.device:
        return self.layers[0][0].device

    @classmethod
    def from_cache(cls, kv, seeds, batch: int, attention_mask=None, model=None) -> "Prefix":
        """Validate a transformers cache, its mask and the seeds (``validate.check_prefix``) and view
        its layers; ``seeds`` is an int (row b gets ``seed + b``) or a sequence of B ints."""
        from .validate import check_prefix

        mask, seeds = check_prefix(kv, seeds, batch, attention_mask, model)
        return cls.view(kv, mask, seeds)

    @classmethod
    def view(cls, kv, mask: torch.Tensor, seeds: torch.Tensor) -> "Prefix":
        """View the layers of cache ``kv`` (``validate.cache_layers``) with an already validated
        ``mask`` and ``seeds``."""
        from .validate import cache_layers

        return cls(cache_layers(kv), mask, mask.sum(-1), seeds)


@dataclass
class StepStats:
    """What one EPIC step cost. Per-sequence counts are int64 tensors ``[B]``; call and token
    counts are for the whole batch.

    ``forward_calls`` / ``forward_tokens`` count the step's own model calls and the rows fed to
    them (prefetched rows of the next step included); the loop's plain forward of the winner, when
    the winner had no evaluation of its own, is counted apart in ``finish_calls`` / ``finish_tokens``.
    """

    survivors: torch.Tensor            # candidates left after the first (admissible-window) prune
    evaluated_depth1: torch.Tensor     # candidates whose depth-1 entropy was computed
    evaluated_deeper: torch.Tensor     # candidate evaluations that went deeper than depth 1
    forward_calls: int = 0
    forward_tokens: int = 0
    forwards_saved: int = 0            # sequences whose next forward came from the winner's evaluation
    finish_calls: int = 0              # model calls for winners that had no evaluation
    finish_tokens: int = 0
    adopted: int = 0                   # candidates whose evaluation came from the previous step's prefetch
    adopted_rows: int = 0              # ... and the rows that evaluation had fed
    reused: int = 0                    # candidates evaluated by the previous step's winner's rollouts
    reused_rows: int = 0               # ... and the rows that saved (engine/reuse.py)
    depth_reached: torch.Tensor | None = None   # [M] depth each surviving candidate reached
    min_forward_tokens: int = 0        # the algorithmic minimum: 1 row per depth-1, K per deeper depth
    prefetch_rows: int = 0             # rows fed for the next step's bets
    prefetch_rows_won: int = 0         # ... on bets that won
    prefetch_hits: int = 0             # sequences handed a usable prefetch
    prefetch_ahead: int = 0            # two-steps-ahead entries used or handed on
    restored: int = 0                  # depth-1 rows run again because max_rows dropped their logits
    max_call_rows: int = 0             # the most rows one model forward of the step took (<= max_rows)
    kept_logits: int = 0               # depth-1 logits rows held at the end of the step


@dataclass
class SampleResult:
    """The reference samplers' output: tokens, cost and the winner's entropy estimate."""

    tokens: torch.Tensor               # int64 [B]
    stats: StepStats
    entropy: torch.Tensor | None = None   # the winner's lookahead-entropy estimate (NaN if never computed)


__all__ = ["BOUND_REL_SLACK", "BOUND_ABS_SLACK", "ENTROPY_SLACK", "SCORE_SLACK", "compute_dtype",
           "entropy_bound", "admissible_bound", "window", "rollout_horizon", "top_k_mask", "PruneResult",
           "EpicConfig", "Prefix", "StepStats", "SampleResult"]
