"""Backend dispatch (``ops.dispatch.choose``, one policy for every op): auto by device, forced by
EPIC_KERNELS_BACKEND (an unavailable forced backend is an error), the reference with one warning when
nothing is built; every backend gives the ops and the samplers the same results; the validators; the
lazy loader. Tensors of the backend-agreement tests live on ``device`` (EPIC_TEST_DEVICE)."""
import warnings

import pytest
import torch

from epic_kernels import _ext
from epic_kernels.engine import fast_sample
from epic_kernels.ops import choose, dispatch as _dispatch, gumbel_topk_prune, softmax_entropy
from epic_kernels.core import EpicConfig
from epic_kernels.core import Prefix
import math
import os
import subprocess
import sys
from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension
import importlib
import importlib.util
import textwrap
import epic_kernels  # noqa: E402
from epic_kernels import philox, reference as R  # noqa: E402
import _cases_cpp as C  # noqa: E402
import _cases_triton as TR  # noqa: E402
from _cases_cpp import cpp_env  # noqa: E402,F401  (fixture)
from _cases_triton import triton_env  # noqa: E402,F401  (fixture)

CPU = torch.device("cpu")


def test_auto_and_forced(monkeypatch):
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    assert _ext.available()
    assert choose(CPU) == "cpp"
    assert choose(torch.zeros(1)) == choose("cpu") == "cpp"          # a tensor or a string is a device too
    for name in ("reference", "cpp", "triton"):       # conftest runs Triton in its CPU interpreter
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", name)
        assert choose(CPU) == name
        assert choose(CPU, op="gumbel_topk_prune") == name
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "cpu")  # the old name of cpp, still accepted
    assert choose(CPU) == "cpp"
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "fpga")
    with pytest.raises(ValueError, match="unknown backend 'fpga'"):
        choose(CPU)
    with pytest.raises(ValueError, match="unknown op"):
        choose(CPU, "reference", "matmul")


def test_every_op_resolves_per_the_table(monkeypatch):
    """Ops without a Triton implementation take their own choice under a forced ``triton``; a
    forced backend reaches every op (fork_attention, plan_rows, fork_layout and the manager too)."""
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")       # Triton may run on CPU tensors (decided, not run)
    for op in ("fork_attention", "plan_rows", "fork_layout", "fork_slots", "candidate_manager"):
        assert choose(CPU, None, op) == "cpp"
        # fork_attention has a Triton kernel; the host ops do not
        assert choose(CPU, "triton", op) == ("triton" if op == "fork_attention" else "cpp")
        assert choose(CPU, "cpu", op) == "cpp"
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", "reference")
        assert choose(CPU, None, op) == "reference"
        monkeypatch.delenv("EPIC_KERNELS_BACKEND")
    cuda = torch.device("cuda")                       # decided without touching a GPU
    assert choose(cuda, None, "fork_attention") == "triton"        # the Triton kernel, compiled
    assert choose(cuda, "cpp", "fork_attention") == "triton"       # no C++ CUDA kernel: the op's own choice
    assert choose(cuda, None, "candidate_manager") == "cpp"        # host-side


def test_per_op_override(monkeypatch):
    """``EPIC_KERNELS_BACKEND_<OP>`` forces one op only, over ``EPIC_KERNELS_BACKEND``; an explicit
    ``backend=`` wins over both."""
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")       # Triton may run on CPU tensors (decided, not run)
    monkeypatch.setenv(_dispatch.op_variable("fork_attention"), "triton")
    assert _dispatch.op_variable("fork_attention") == "EPIC_KERNELS_BACKEND_FORK_ATTENTION"
    assert choose(CPU, None, "fork_attention") == "triton"
    assert choose(CPU) == "cpp" and choose(CPU, None, "plan_rows") == "cpp"     # the other ops: unforced
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "reference")
    assert choose(CPU, None, "fork_attention") == "triton" and choose(CPU) == "reference"
    assert choose(CPU, "cpp", "fork_attention") == "cpp"
    monkeypatch.setenv(_dispatch.op_variable("fork_attention"), "gpu")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        choose(CPU, None, "fork_attention")


def test_cuda_tensors_reach_the_cpp_cuda_kernels(monkeypatch):
    """Without Triton a CUDA tensor goes to the C++ CUDA kernels when the extension has them, else to
    the reference with one warning naming why; a forced ``cpp`` without them is an error."""
    cuda = torch.device("cuda")
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "_triton_installed", lambda: False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    has = {"CUDA": True}
    monkeypatch.setattr(_ext, "has_kernel", lambda name, dev: dev == "cpu" or has["CUDA"])
    assert choose(cuda) == "cpp" and choose(cuda, op="gumbel_topk_prune") == "cpp"
    has["CUDA"] = False
    with pytest.warns(RuntimeWarning, match="no fast kernel of softmax_entropy for cuda tensors.*built without CUDA"):
        assert choose(cuda) == "reference"
    with pytest.raises(RuntimeError, match="backend 'cpp' was requested .*built without CUDA"):
        choose(cuda, "cpp")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested .* triton is not installed"):
        choose(cuda, "triton")
    # fork_attention's only CUDA kernel is Triton's: without triton, the reference with one warning
    with pytest.warns(RuntimeWarning, match="no fast kernel of fork_attention for cuda tensors.*triton is not"):
        assert choose(cuda, None, "fork_attention") == "reference"


def test_warning_names_the_device_not_a_method(monkeypatch):
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "available", lambda: False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning) as record:
        assert choose(torch.zeros(2)) == "reference"
    message = str(record[0].message)
    assert "for cpu tensors" in message and "built-in method" not in message


def test_forced_but_unavailable_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested .* but cannot run"):
        choose(CPU, "triton")
    monkeypatch.setattr(_ext, "available", lambda: False)
    for op in ("softmax_entropy", "fork_attention", "plan_rows", "fork_layout", "fork_slots", "candidate_manager"):
        with pytest.raises(RuntimeError, match="backend 'cpp' was requested .* but cannot run"):
            choose(CPU, "cpu", op)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "available", lambda: False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference"):
        assert choose(CPU) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose(CPU) == "reference"           # only once


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_ops_agree_across_backends(backend, device):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 111, generator=gen) * 3).to(device)
    logits[1, 7:] = float("-inf")
    seeds, pos = torch.tensor([1, 2, 3, 4, 2**32 - 1]).to(device), torch.tensor([0, 5, 9, 2**31 - 1, 3]).to(device)
    h, lse, tok = softmax_entropy(logits, seeds=seeds, streams=2, positions=pos, backend=backend)
    h_ref, lse_ref, tok_ref = softmax_entropy(logits, seeds=seeds, streams=2, positions=pos, backend="reference")
    assert torch.allclose(h, h_ref, atol=1e-5) and torch.allclose(lse, lse_ref, atol=1e-5)
    assert torch.equal(tok, tok_ref)
    pr = gumbel_topk_prune(logits, seeds, pos, 1.5, 4, backend=backend)
    ref = gumbel_topk_prune(logits, seeds, pos, 1.5, 4, backend="reference")
    assert torch.equal(pr.ids, ref.ids) and torch.equal(pr.offsets, ref.offsets)
    assert torch.equal(pr.front_ids, ref.front_ids) and torch.equal(pr.topk_ids, ref.topk_ids)
    assert torch.allclose(pr.scores, ref.scores, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_streams_columns_agree_across_backends(backend, device):
    """streams [N, S]: tokens [N, S], column k = the call with streams[:, k] on the same backend and
    the reference's tokens (C++: one pass; Triton and the reference loop over the columns)."""
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(5, 300, generator=gen, dtype=torch.float64) * 3).to(device)
    logits[1, 7:] = float("-inf")
    seeds, pos = torch.tensor([1, 2, 3, 4, 2**32 - 1]).to(device), torch.tensor([0, 5, 9, 2**31 - 1, 3]).to(device)
    streams = torch.tensor([[1, 2, 0], [1, 2, 7], [5, 5, 1], [2**31 - 1, 1, 2], [3, 2, 1]]).to(device)
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


@pytest.mark.parametrize("backend", ["cpp", "cpu", "triton"])
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


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_key_ranges_are_checked_alike_on_every_backend(backend):
    """Out-of-range seeds or positions are the same ValueError on every backend (the C++ kernels
    used to raise their own error while the reference accepted them)."""
    x, ok = torch.randn(3, 10), torch.tensor([1, 2, 3])
    for seeds, pos, what in [(torch.tensor([0, 1, 2**32]), ok, r"seeds must lie in \[0, 2\*\*32\)"),
                             (torch.tensor([0, -1, 2]), ok, "seeds must lie in"),
                             (ok, torch.tensor([0, 2**31, 1]), r"positions must lie in \[0, 2\*\*31\)")]:
        with pytest.raises(ValueError, match=what):
            softmax_entropy(x, seeds=seeds, streams=1, positions=pos, backend=backend)
        with pytest.raises(ValueError, match=what):
            gumbel_topk_prune(x, seeds, pos, 1.0, backend=backend)


@pytest.mark.parametrize("call,message", [
    (lambda l, s, p: softmax_entropy(l[0]), "shape \\[batch, vocab\\]"),
    (lambda l, s, p: softmax_entropy(l.index_fill(1, torch.tensor([2]), float("inf"))), "\\+inf"),
    (lambda l, s, p: softmax_entropy(l.index_fill(0, torch.tensor([1]), float("-inf"))), "no finite entry"),
    (lambda l, s, p: softmax_entropy(l[:, :0]), "at least one column"),
    (lambda l, s, p: softmax_entropy(l, streams=1), "streams and positions need seeds"),
    (lambda l, s, p: gumbel_topk_prune(l, s.float(), p, 1.0), "seeds must be a 1-D integer tensor"),
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


# ---------------------------------------------------------------------------------------------- #
# C++ (backend "cpp")                                                                            #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("call,match", [
    (lambda: C.OPS.softmax_entropy(torch.zeros(3)), "shape"),
    (lambda: C.OPS.softmax_entropy(torch.zeros(2, 3, dtype=torch.int32)), "float16"),
    (lambda: C.OPS.softmax_entropy(torch.zeros(2, 0)), "at least one column"),
    (lambda: C.OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long),
                                        torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "seeds"),
    (lambda: C.OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.tensor([0, 2**32]),
                                        torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "outside"),
    (lambda: C.OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, dtype=torch.long),
                                        torch.zeros(2, dtype=torch.long)), "integer"),
    (lambda: C.OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.tensor([0, -1]), torch.zeros(2), 1), "positions"),
    (lambda: C.OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.zeros(2, dtype=torch.long), torch.zeros(2), 0), "top_k"),
    (lambda: C.OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.zeros(2, dtype=torch.long), torch.zeros(3), 1), "width"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.usefixtures("cpp_env")
def test_import_does_not_load_extension():
    code = "import sys, epic_kernels; assert 'epic_kernels._C' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=C.ROOT)


@pytest.mark.usefixtures("cpp_env")
def test_ops_error_names_the_build_command(monkeypatch):
    monkeypatch.setattr(_ext, "_state", {"loaded": True, "module": None, "error": ImportError("gone")})
    assert not _ext.available()
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        _ext.ops()


# ---------------------------------------------------------------------------------------------- #
# Triton (backend "triton"; the CPU interpreter without a GPU)                                   #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
def test_validation_errors(device):
    tk = TR._ops()
    x = torch.randn(2, 5, device=device)
    s, p = (torch.zeros(2, dtype=torch.int64, device=device) for _ in range(2))
    with pytest.raises(ValueError, match="logits"):
        tk.softmax_entropy_triton(torch.randn(5, device=device))
    with pytest.raises(ValueError, match="float16"):
        tk.softmax_entropy_triton(torch.zeros(2, 5, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="positions"):
        tk.softmax_entropy_triton(x, s)
    with pytest.raises(ValueError, match="seeds"):
        tk.gumbel_topk_prune_triton(x, torch.full((2,), 2**32, device=device), p, 1.0, 1)
    with pytest.raises(ValueError, match="shape"):
        tk.gumbel_topk_prune_triton(x, s[:1], p, 1.0, 1)
    with pytest.raises(ValueError, match="width"):
        tk.gumbel_topk_prune_triton(x, s, p, -1.0, 1)
    with pytest.raises(ValueError, match="top_k"):
        tk.gumbel_topk_prune_triton(x, s, p, 1.0, 0)


@pytest.mark.usefixtures("triton_env")
def test_import_without_triton_raises_only_when_called():
    code = textwrap.dedent("""
        import sys, torch
        sys.modules["triton"] = None
        import epic_kernels.triton_kernels as tk
        assert not tk.HAS_TRITON
        try:
            tk.softmax_entropy_triton(torch.zeros(1, 3))
        except RuntimeError as e:
            assert "triton" in str(e)
        else:
            raise AssertionError("no error")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TR.ROOT, *sys.path]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_empty_batch_gives_empty_outputs_on_every_backend(backend, device):
    """The one rule for N = 0 (ops/softmax_entropy.py, ops/gumbel_topk_prune.py): accepted, empty
    outputs of the right dtypes and shapes, on every backend (the samplers reject an empty batch)."""
    for dtype in (torch.float32, torch.float64):
        x, e = torch.zeros(0, 7, dtype=dtype, device=device), torch.zeros(0, dtype=torch.int64, device=device)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        h, lse = softmax_entropy(x, backend=backend)
        assert h.shape == lse.shape == (0,) and h.dtype == lse.dtype == acc
        h, lse, tok = softmax_entropy(x, seeds=e, streams=1, positions=e, backend=backend)
        assert tok.shape == (0,) and tok.dtype == torch.int64
        _, _, tok = softmax_entropy(x, seeds=e, streams=e.view(0, 1).expand(0, 3), positions=e, backend=backend)
        assert tok.shape == (0, 3)
        pr = gumbel_topk_prune(x, e, e, 1.0, 3, backend=backend)
        assert pr.ids.shape == pr.counts.shape == (0,) and pr.offsets.tolist() == [0]
        assert pr.topk_ids.shape == pr.topk_scores.shape == (0, 3) and pr.scores.dtype == acc
