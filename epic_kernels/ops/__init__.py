"""The compiled ops of epic_kernels, one file per op: its contract, validator, specification
(reference implementation), fake kernel and dispatch. ``dispatch.choose`` is the one policy that
picks ``reference`` / ``cpp`` / ``triton`` for every op (docs/kernels.md, "Dispatch").

Importing this package never loads the compiled extension (``_ext.load`` does, on first use)."""
from .candidate_manager import PyCandidateManager, make_manager
from .dispatch import BACKENDS, choose
from .fork_attention import fork_attention
from .fork_layout import fork_layout
from .fork_slots import fork_slots
from .gumbel_topk_prune import gumbel_topk_prune
from .plan_rows import plan_rows
from .softmax_entropy import softmax_entropy
from .topk_support import topk_support

__all__ = ["softmax_entropy", "gumbel_topk_prune", "fork_attention", "plan_rows", "fork_layout", "fork_slots",
           "topk_support", "make_manager", "PyCandidateManager", "choose", "BACKENDS"]
