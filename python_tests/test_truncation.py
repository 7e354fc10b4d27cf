"""Candidate truncation: the partial top-k equals the reference's stable-sort definition."""
import torch

from epic_kernels.reference import policy_logits
from epic_kernels.truncation import top_k_logits, truncate


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
            assert torch.equal(top_k_logits(x, k), policy_logits(x, k)), (trial, V, k)
            assert torch.equal(truncate(x, top_k=k), policy_logits(x, k))


def test_top_k_keeps_exactly_k_and_does_not_modify_its_input():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 0.0]])
    before = x.clone()
    out = top_k_logits(x, 2)
    assert torch.equal(x, before)
    assert out.isfinite().sum() == 2 and out[0, 0] == 3 and out[0, 2] == 3   # ties to the lower ids
