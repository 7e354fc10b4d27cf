"""Backend dispatch: auto by device, forced by EPIC_KERNELS_BACKEND (an unavailable forced backend is
an error), the reference with one warning when nothing is built; every backend gives the samplers the
same tokens."""
import warnings

import pytest
import torch

from epic_kernels import _ext
from epic_kernels.engine import fast_sample
from epic_kernels.ops import _dispatch, choose, gumbel_topk_prune, softmax_entropy
from epic_kernels.core import EpicConfig
from epic_kernels.core import Prefix
from epic_kernels.reference import cache_layers

CPU = torch.device("cpu")


def test_auto_and_forced(monkeypatch):
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    assert _ext.available()
    assert choose(CPU) == "cpu"
    for name in ("reference", "cpu", "triton"):       # conftest runs Triton in its CPU interpreter
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", name)
        assert choose(CPU) == name
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "fpga")
    with pytest.raises(ValueError, match="unknown backend 'fpga'"):
        choose(CPU)


def test_forced_but_unavailable_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested but cannot run"):
        choose(CPU, "triton")
    monkeypatch.setattr(_ext, "available", lambda: False)
    with pytest.raises(RuntimeError, match="backend 'cpu' was requested but cannot run"):
        choose(CPU, "cpu")


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "available", lambda: False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference"):
        assert choose(CPU) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose(CPU) == "reference"           # only once


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_ops_agree_across_backends(backend):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 111, generator=gen) * 3
    logits[1, 7:] = float("-inf")
    seeds, pos = torch.tensor([1, 2, 3, 4, 2**32 - 1]), torch.tensor([0, 5, 9, 2**31 - 1, 3])
    h, lse, tok = softmax_entropy(logits, seeds=seeds, streams=2, positions=pos, backend=backend)
    h_ref, lse_ref, tok_ref = softmax_entropy(logits, seeds=seeds, streams=2, positions=pos, backend="reference")
    assert torch.allclose(h, h_ref, atol=1e-5) and torch.allclose(lse, lse_ref, atol=1e-5)
    assert torch.equal(tok, tok_ref)
    pr = gumbel_topk_prune(logits, seeds, pos, 1.5, 4, backend=backend)
    ref = gumbel_topk_prune(logits, seeds, pos, 1.5, 4, backend="reference")
    assert torch.equal(pr.ids, ref.ids) and torch.equal(pr.offsets, ref.offsets)
    assert torch.equal(pr.front_ids, ref.front_ids) and torch.equal(pr.topk_ids, ref.topk_ids)
    assert torch.allclose(pr.scores, ref.scores, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_streams_columns_agree_across_backends(backend):
    """streams [N, S]: tokens [N, S], column k = the call with streams[:, k] on the same backend and
    the reference's tokens (C++: one pass; Triton and the reference loop over the columns)."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 300, generator=gen, dtype=torch.float64) * 3
    logits[1, 7:] = float("-inf")
    seeds, pos = torch.tensor([1, 2, 3, 4, 2**32 - 1]), torch.tensor([0, 5, 9, 2**31 - 1, 3])
    streams = torch.tensor([[1, 2, 0], [1, 2, 7], [5, 5, 1], [2**31 - 1, 1, 2], [3, 2, 1]])
    h, lse, tok = softmax_entropy(logits, seeds=seeds, streams=streams, positions=pos, backend=backend)
    assert tok.shape == (5, 3) and tok.dtype == torch.int64
    for k in range(3):
        h1, lse1, t1 = softmax_entropy(logits, seeds=seeds, streams=streams[:, k], positions=pos,
                                       backend=backend)
        assert torch.equal(tok[:, k], t1) and torch.equal(h, h1) and torch.equal(lse, lse1)
        _, _, t_ref = softmax_entropy(logits, seeds=seeds, streams=streams[:, k], positions=pos,
                                      backend="reference")
        assert torch.equal(t1, t_ref)
    _, _, tok1 = softmax_entropy(logits, seeds=seeds, streams=streams[:, :1], positions=pos, backend=backend)
    assert tok1.shape == (5, 1) and torch.equal(tok1[:, 0], tok[:, 0])


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_sampler_tokens_do_not_depend_on_the_backend(tiny, batch7, backend):
    _, logits, kv, mask = batch7
    logits = logits.detach().float()              # the kernels' float32 path
    cfg = EpicConfig(alpha=1.0, horizon=2, rollouts=2, block_size=4)
    for seed in (3, 4):
        prefix = Prefix.from_cache(kv, seed, 7, mask, tiny)
        view = prefix
        ours = fast_sample(logits, view, tiny, cfg, backend)
        ref = fast_sample(logits, view, tiny, cfg, "reference")
        assert torch.equal(ours.tokens, ref.tokens)


@pytest.mark.parametrize("call,message", [
    (lambda l, s, p: softmax_entropy(l[0]), "tensor \\[N, V\\]"),
    (lambda l, s, p: softmax_entropy(l.long()), "float16, bfloat16, float32 or float64"),
    (lambda l, s, p: softmax_entropy(l.index_fill(1, torch.tensor([2]), float("nan"))), "NaN"),
    (lambda l, s, p: softmax_entropy(l, seeds=s[:2], streams=1, positions=p), "seeds has 2 entries"),
    (lambda l, s, p: softmax_entropy(l, seeds=s, streams=torch.ones(4, 2, dtype=torch.long), positions=p),
     "streams \\[N, S\\] must have shape \\(3, S\\) with S >= 1, got \\(4, 2\\)"),
    (lambda l, s, p: softmax_entropy(l, seeds=s, streams=torch.ones(3, 0, dtype=torch.long), positions=p),
     "with S >= 1, got \\(3, 0\\)"),
    (lambda l, s, p: softmax_entropy(l, seeds=s, streams=torch.ones(3, 2, 1, dtype=torch.long), positions=p),
     "streams must be an int, \\[N\\] or \\[N, S\\]"),
    (lambda l, s, p: softmax_entropy(l, seeds=s, streams=torch.ones(3, 2), positions=p),
     "streams must be an int or an integer tensor, got torch.float32"),
    (lambda l, s, p: softmax_entropy(l, seeds=s, streams=torch.ones(2, dtype=torch.long), positions=p),
     "streams must be an int, \\[N\\] or \\[N, S\\] with N = 3 rows, got shape \\(2,\\)"),
    (lambda l, s, p: gumbel_topk_prune(l, s[:2], p, 1.0), "seeds has 2 entries"),
    (lambda l, s, p: gumbel_topk_prune(l, s, p, -1.0), "width must be >= 0"),
    (lambda l, s, p: gumbel_topk_prune(l.unsqueeze(0), s, p, 1.0), "shape"),
    (lambda l, s, p: gumbel_topk_prune(l, s, p, 1.0, top_k=0), "top_k"),
])
def test_op_input_errors(call, message):
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match=message):
        call(logits, torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
