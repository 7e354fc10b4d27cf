"""Candidate truncation and the one tie-aware top-k (the op ``ops.topk_support`` and
``core.top_k_mask``, shared by the rollout policy, top-k truncation and the engine): equal to the
stable-sort definition, on every backend."""
import torch

from epic_kernels import _ext
from epic_kernels.core import top_k_mask
from epic_kernels.ops.topk_support import topk_support
from epic_kernels.reference import policy_logits
from epic_kernels.truncation import truncate


# the compiled kernel where it is built (test_topk_support.py requires it), the reference always
BACKENDS = ("reference", "cpp") if _ext.available() else ("reference",)


def stable_sort_top_k(logits, k):
    """The definition: keep the first k of a stable descending sort (ties to the lower id)."""
    if k >= logits.shape[-1]:
        return logits
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, True)
    return logits.masked_fill(~keep, float("-inf"))


def test_top_k_equals_the_reference_definition():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        V = int(torch.randint(2, 300, (1,), generator=g))
        x = torch.randn(5, V, generator=g, dtype=torch.float64 if trial % 2 else torch.float32)
        if trial % 3 == 0:                       # heavy ties: few distinct values
            x = torch.round(x * 2) / 2
        if trial % 4 == 0:                       # removed tokens, sometimes more than k of them
            x[:, : V // 2] = float("-inf")
        for k in (1, 2, V // 3 + 1, V - 1, V, V + 5):
            want = stable_sort_top_k(x, k)
            for backend in BACKENDS:
                assert torch.equal(top_k_mask(x, k, backend), want), (trial, V, k, backend)
                assert torch.equal(truncate(x, top_k=k, backend=backend), want)
                if k < V:                        # the support itself: ids ascending, their logits
                    vals, ids = topk_support(x, k, backend=backend)
                    assert torch.equal(ids, torch.sort(torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k]).values)
                    assert torch.equal(vals, x.gather(1, ids))
            assert torch.equal(policy_logits(x, k), want)


def test_top_k_keeps_exactly_k_and_does_not_modify_its_input():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 0.0]])
    before = x.clone()
    out = top_k_mask(x, 2)
    assert torch.equal(x, before)
    assert out.isfinite().sum() == 2 and out[0, 0] == 3 and out[0, 2] == 3   # ties to the lower ids
