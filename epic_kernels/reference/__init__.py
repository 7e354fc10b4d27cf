"""Pure-PyTorch reference of EPIC: the oracle that every kernel and engine is tested against.

* ``primitives``: entropy, the rollout policy, keyed Gumbel-max, the first prune, the RB and MC
  estimators, the score;
* ``rollout``: per-depth rollout entropies by plain batched forwards over copied KV;
* ``samplers``: ``exhaustive_sample`` (the oracle) and ``lazy_sample`` (Algorithm 1).

It imports only ``core``, ``philox`` and ``validate``: never the ops or the engine.
"""
from ..core import PruneResult, compute_dtype, entropy_bound, rollout_horizon
from .primitives import (gumbel_argmax, gumbel_topk_prune, mc_estimate, partial_sums, perturbed_scores,
                         policy_log_probs, policy_logits, rb_estimate, score, softmax_entropy)
from .rollout import rollout_entropies, select_rows
from .samplers import exhaustive_sample, lazy_sample, score_bounds

__all__ = ["PruneResult", "compute_dtype", "entropy_bound", "rollout_horizon", "gumbel_argmax",
           "gumbel_topk_prune", "mc_estimate", "partial_sums", "perturbed_scores", "policy_log_probs",
           "policy_logits", "rb_estimate", "score", "softmax_entropy", "rollout_entropies",
           "select_rows", "exhaustive_sample", "lazy_sample", "score_bounds"]
