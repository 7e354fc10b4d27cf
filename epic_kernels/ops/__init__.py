"""The fused ops, dispatched by device: Triton for CUDA tensors, C++ for CPU tensors, the pure-PyTorch
reference when neither is available. One op per file; ``_dispatch`` decides."""
from ._dispatch import BACKENDS, choose
from .gumbel_topk_prune import gumbel_topk_prune
from .softmax_entropy import softmax_entropy

__all__ = ["gumbel_topk_prune", "softmax_entropy", "choose", "BACKENDS"]
