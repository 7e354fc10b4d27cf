"""The rollout-row bookkeeping ops ``plan_rows`` and ``fork_layout``, both backends side by side: the
C++ ops (csrc/cpu/plan_rows.cpp, csrc/cpu/fork_layout.cpp) against their specification
(``plan_rows_reference`` in epic_kernels/ops/plan_rows.py, ``fork_layout_reference`` in
epic_kernels/ops/fork_layout.py), and the specification against what the
engine computed before it called them (the code of ``Evaluator.plan`` and ``ForkBatch.build``) on real tiny-model steps.

A missing extension is an error (``make test`` builds it); the specification itself runs in the
engine tests with ``EPIC_KERNELS_BACKEND=reference``. Build: ``pip install --no-build-isolation -e .``
"""
from __future__ import annotations

import importlib
import random
import types

import pytest
import torch

import epic_kernels
from epic_kernels import _ext
from epic_kernels.ops.dispatch import choose
from epic_kernels.engine.attention import ForkBatch
from epic_kernels.engine.runtime import SlotPool
from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.testing import random_prompts, require_extension

require_extension("plan_rows", "fork_layout")

OPS = _ext.ops()
# Host-only ops: their tensors stay on the CPU whatever EPIC_TEST_DEVICE says (the engine keeps its
# bookkeeping on the host).
PR = importlib.import_module("epic_kernels.ops.plan_rows")
FL = importlib.import_module("epic_kernels.ops.fork_layout")
R = types.SimpleNamespace(PlannedRows=PR.PlannedRows, ForkLayout=FL.ForkLayout,
                          plan_rows=PR.plan_rows_reference, fork_layout=FL.fork_layout_reference,
                          plan_rows_impl=PR.plan_rows_impl, fork_layout_impl=FL.fork_layout_impl)


def _equal(got, want, what=""):
    assert type(got) is type(want) and got._fields == want._fields
    for f, g, w in zip(want._fields, got, want):
        assert g.dtype == torch.int64 and w.dtype == torch.int64, (what, f, g.dtype, w.dtype)
        assert g.shape == w.shape and torch.equal(g, w), (what, f, g.tolist(), w.tolist())


def random_state(rng: random.Random, M: int, K: int, B: int, mix: str = "any"):
    """Per-candidate state as an Evaluator holds it: depth 0, 1, deeper, finished (depth >= goal)."""
    depth, goal = [], []
    for _ in range(M):
        kind = mix if mix != "any" else rng.choice(["zero", "one", "deep", "done", "done"])
        d = {"zero": 0, "one": 1, "deep": rng.randint(2, 6), "done": rng.randint(0, 6)}[kind]
        g = d - rng.randint(0, 2) if kind == "done" else d + rng.randint(1, 3)
        depth.append(d)
        goal.append(max(g, 0))
    t = lambda x: torch.tensor(x, dtype=torch.int64).reshape(-1)  # noqa: E731
    seq = t([rng.randrange(B) for _ in range(M)]) if M else t([])
    tokens = t([rng.randrange(50000) for _ in range(M)])
    last = t([rng.randrange(50000) for _ in range(M * K)]).view(M, K)
    base = t([rng.randrange(1, 4000) for _ in range(M)])
    return t(depth), t(goal), seq, tokens, last, base


# ------------------------------------------------------------------------------------------------ #
# C++ == specification                                                                             #
# ------------------------------------------------------------------------------------------------ #


@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("lead", [0, 1, 2])
def test_plan_rows_equals_spec_on_random_states(K, lead):
    rng = random.Random(100 * K + lead)
    for trial in range(150):
        M = rng.choice([0, 1, 2, 3, 5, 8, 13, 40, 140])
        mix = rng.choice(["any", "any", "any", "zero", "one", "deep", "done"])
        state = random_state(rng, M, K, rng.randint(1, 6), mix)
        want = R.plan_rows(*state, K, lead)
        _equal(R.PlannedRows(*OPS.plan_rows(*state, K, lead)), want, (K, lead, trial))
        _equal(R.plan_rows_impl(*state, K, lead, "cpu"), want)
        _equal(R.plan_rows_impl(*state, K, lead, "reference"), want)
        assert len(want.row_candidate) == len(want.first) + K * len(want.deep)
        if mix == "zero":
            assert len(want.deep) == 0 and len(want.fan_src) == 0
        if mix == "one":
            assert len(want.first) == 0 and len(want.fan_src) == len(want.deep) * (K - 1)


def test_plan_rows_layout_by_hand():
    """Candidates 0 (depth 0), 1 (depth 1), 2 (depth 2), 3 (finished), 4 (depth 3), 5 (depth 1)."""
    depth, goal = torch.tensor([0, 1, 2, 0, 3, 1]), torch.tensor([1, 3, 3, 0, 4, 2])
    seq, tokens = torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(10, 16)
    last, base = torch.arange(100, 112).view(6, 2), torch.arange(50, 56)
    for rows in (R.plan_rows(depth, goal, seq, tokens, last, base, 2, 1),
                 R.plan_rows_impl(depth, goal, seq, tokens, last, base, 2, 1, "cpu")):
        assert rows.first.tolist() == [0] and rows.deep.tolist() == [1, 2, 4, 5]
        assert rows.row_candidate.tolist() == [0, 1, 1, 2, 2, 4, 4, 5, 5]
        assert rows.seq.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
        assert rows.slot.tolist() == [0, 2, 3, 4, 5, 8, 9, 10, 11]
        assert rows.fill.tolist() == [1, 2, 2, 3, 3, 4, 4, 2, 2]
        assert rows.tokens.tolist() == [10, 102, 103, 104, 105, 108, 109, 110, 111]
        assert rows.positions.tolist() == [50, 52, 52, 54, 54, 57, 57, 56, 56]
        assert rows.fan_src.tolist() == [2, 10] and rows.fan_dst.tolist() == [3, 11]


def test_plan_rows_empty_and_strided():
    e = torch.empty(0, dtype=torch.int64)
    for K in (1, 3):
        got = R.plan_rows_impl(e, e, e, e, e.view(0, K), e, K, 0, "cpu")
        _equal(got, R.plan_rows(e, e, e, e, e.view(0, K), e, K, 0))
        assert all(len(t) == 0 for t in got)
    rng = random.Random(5)
    state = random_state(rng, 30, 3, 4)
    big = [torch.stack([t, t + 1], -1)[..., 0] for t in state]       # same values, non-contiguous
    big[4] = state[4].t().contiguous().t()                             # last [M, K] column-major
    assert not any(t.is_contiguous() for t in big)
    _equal(R.PlannedRows(*OPS.plan_rows(*big, 3, 1)), R.plan_rows(*state, 3, 1))


def test_fork_layout_equals_spec():
    rng = random.Random(0)
    for trial in range(400):
        B = rng.randint(1, 7)
        N = rng.choice([0, 1, 2, 5, 9, 30, 280])
        used = rng.sample(range(B), rng.randint(1, B))              # some sequences have no rows
        seq = torch.tensor([rng.choice(used) for _ in range(N)], dtype=torch.int64)
        want = R.fork_layout(seq, B)
        _equal(R.ForkLayout(*OPS.fork_layout(seq, B)), want, trial)
        _equal(R.fork_layout_impl(seq, B, "cpu"), want)
        counts = torch.bincount(seq, minlength=B)
        assert want.pad_index.shape == (B, max(int(counts.max()) if N else 0, 1))
    e = torch.empty(0, dtype=torch.int64)
    for B in (0, 3):
        _equal(R.fork_layout_impl(e, B, "cpu"), R.fork_layout(e, B))
    seq = torch.tensor([2, 0, 2, 2, 1, 0])
    strided = torch.stack([seq, seq], -1)[:, 1]
    assert not strided.is_contiguous()
    row_j, pad = R.fork_layout_impl(strided, 4, "cpu")
    assert row_j.tolist() == [0, 0, 1, 2, 0, 1]
    assert pad.tolist() == [[1, 5, 6], [4, 6, 6], [0, 2, 3], [6, 6, 6]]


def test_backends_and_their_resolution(monkeypatch):
    """``reference`` runs the specification; ``cpp`` (alias ``cpu``) the op; a backend without these
    ops (``triton``, e.g. the step's backend on a GPU) resolves to the op's own choice (``cpp``)."""
    calls = []
    monkeypatch.setattr(PR, "plan_rows_reference", lambda *a: calls.append("plan") or "spec")
    monkeypatch.setattr(FL, "fork_layout_reference", lambda *a: calls.append("layout") or "spec")
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    state = random_state(random.Random(1), 4, 2, 2)
    assert R.plan_rows_impl(*state, 2, 0, "reference") == "spec"
    assert R.fork_layout_impl(state[2], 2, "reference") == "spec"
    assert calls == ["plan", "layout"]
    for backend in ("cpp", "cpu", "triton"):
        assert isinstance(R.plan_rows_impl(*state, 2, 0, backend), R.PlannedRows)
        assert isinstance(R.fork_layout_impl(state[2], 2, backend), R.ForkLayout)
    assert calls == ["plan", "layout"]
    for op in ("plan_rows", "fork_layout"):
        assert choose("cpu", None, op) == "cpp" and choose("cpu", "triton", op) == "cpp"
        assert choose("cpu", "reference", op) == "reference"
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", "reference")
        assert choose("cpu", None, op) == "reference"
        monkeypatch.delenv("EPIC_KERNELS_BACKEND")


def test_validated_functions():
    """``ops.plan_rows`` / ``ops.fork_layout`` validate (ValueError) and agree on every backend."""
    state = random_state(random.Random(5), 7, 3, 2)
    want = R.plan_rows(*state, 3, 2)
    for backend in ("reference", "cpp"):
        _equal(PR.plan_rows(*state, 3, 2, backend=backend), want)
        _equal(FL.fork_layout(state[2], 2, backend=backend), R.fork_layout(state[2], 2))
    with pytest.raises(ValueError, match="int64 CPU tensor"):
        PR.plan_rows(state[0].int(), *state[1:], 3, 2)
    with pytest.raises(ValueError, match=r"last must have shape \(7, 2\)"):
        PR.plan_rows(*state, 2, 2)
    with pytest.raises(ValueError, match="K >= 1"):
        PR.plan_rows(*state, 0, 2)
    with pytest.raises(ValueError, match=r"seq values must lie in \[0, 1\)"):
        FL.fork_layout(torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="B must be an int >= 0"):
        FL.fork_layout(torch.tensor([0]), -1)


# ------------------------------------------------------------------------------------------------ #
# opcheck and errors                                                                               #
# ------------------------------------------------------------------------------------------------ #


def test_opcheck():
    """Every output size is data-dependent: the fakes use ``get_ctx().new_dynamic_size()``."""
    state = random_state(random.Random(2), 9, 2, 3)
    for args in [(*state, 2, 1), (*random_state(random.Random(3), 5, 1, 2), 1, 0)]:
        result = torch.library.opcheck(OPS.plan_rows.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result
    for args in [(torch.tensor([1, 0, 1, 1, 3]), 5), (torch.empty(0, dtype=torch.int64), 2)]:
        result = torch.library.opcheck(OPS.fork_layout.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_plan_rows_errors():
    state = list(random_state(random.Random(4), 6, 2, 2))
    names = ["depth", "goal", "seq", "tokens", "last", "base"]

    def bad(match, i=None, value=None, K=2, lead=0):
        args = list(state)
        if i is not None:
            args[i] = value
        with pytest.raises(RuntimeError, match=match):
            OPS.plan_rows(*args, K, lead)

    for i, name in enumerate(names):
        bad(f"plan_rows: {name} must be an int64 tensor, got Int", i, state[i].int())
        bad(f"plan_rows: {name} must be an int64 tensor, got Float", i, state[i].float())
    for name in ("goal", "seq", "tokens", "base"):
        i = names.index(name)
        bad(rf"plan_rows: {name} must have shape \(M,\) = \[6\], got \[5\]", i, state[i][:5])
    bad(r"plan_rows: depth must have shape \(M,\), got \[6, 1\]", 0, state[0].view(6, 1))
    bad(r"plan_rows: last must have shape \(M, K\) = \[6, 2\], got \[6, 3\]", 4, torch.zeros(6, 3, dtype=torch.int64))
    bad(r"plan_rows: last must have shape \(M, K\) = \[6, 2\], got \[6\]", 4, state[4][:, 0])
    bad("plan_rows: K \\(rollouts\\) must be >= 1, got 0", K=0)
    bad("plan_rows: lead must be >= 0, got -2", lead=-2)
    bad(r"plan_rows: depth\[2\] = -1 is negative", 0, torch.tensor([0, 1, -1, 0, 0, 0]))


def test_fork_layout_errors():
    seq = torch.tensor([0, 1, 1])
    for args, match in [((seq.int(), 2), "fork_layout: seq must be an int64 tensor, got Int"),
                        ((seq.view(3, 1), 2), r"fork_layout: seq must have shape \(N,\), got \[3, 1\]"),
                        ((seq, 1), r"fork_layout: seq\[1\] = 1 is outside \[0, 1\)"),
                        ((seq - 1, 2), r"fork_layout: seq\[0\] = -1 is outside \[0, 2\)"),
                        ((seq, -1), "fork_layout: B must be >= 0, got -1")]:
        with pytest.raises(RuntimeError, match=match):
            OPS.fork_layout(*args)


# ------------------------------------------------------------------------------------------------ #
# The specification == what the engine computes today                                              #
# ------------------------------------------------------------------------------------------------ #


class _Recorder:
    """Wraps ``Evaluator.plan`` and ``ForkBatch.build``: each call is compared with the specification
    computed from the state just before it (and with the C++ op)."""

    def __init__(self, monkeypatch):
        self.plans, self.layouts, self.leads, self.ks = 0, 0, set(), set()
        self.copies = []
        plan, build, copy_slots = Evaluator.plan, ForkBatch.build.__func__, SlotPool.copy_slots
        rec = self

        def copy_spy(pool, src, dst, length, src_start=0, dst_start=0):
            rec.copies.append((src.clone(), dst.clone(), length))
            return copy_slots(pool, src, dst, length, src_start, dst_start)

        def plan_spy(ev, *args, **kwargs):
            # the engine maps the op's path (m, r) = m K + r to its pool slot
            # st.paths[m, r] (taken when first needed); no max_rows chunking at these sizes
            K, st = ev.cfg.rollouts, ev.state
            state = [t.clone() for t in (st.depth, st.goal, st.seq, st.tokens, st.last, st.base)]
            rec.copies.clear()
            rows = plan(ev, *args, **kwargs)
            want = R.plan_rows(*state, K, st.lead)
            _equal(R.plan_rows_impl(*state, K, st.lead, "cpu"), want)
            if rows is None:
                assert len(want.row_candidate) == 0 and not rec.copies
            else:
                assert len(rows.restore) == 0
                want = want._replace(slot=st.paths[want.row_candidate, want.slot % K])
                got_rows = dict(vars(rows.call), slot=rows.call.path, first=rows.first, deep=rows.deep)
                for name in ("seq", "slot", "fill", "tokens", "positions", "first", "deep"):
                    got = got_rows[name]
                    assert torch.equal(got, getattr(want, name)), (name, got, getattr(want, name))
                    assert got.dtype == torch.int64
                fans = [c for c in rec.copies if c[2] == st.lead + 1]
                if len(want.fan_src):
                    assert len(fans) == 1
                    src, dst, length = fans[0]
                    assert torch.equal(src, st.paths[want.fan_src // K, 0])
                    assert torch.equal(dst, st.paths[want.fan_dst // K, want.fan_dst % K])
                else:
                    assert not fans
                rec.plans += 1
                rec.leads.add(st.lead)
                rec.ks.add(K)
            return rows

        def build_spy(cls, prefix, pool, seq, slot, fill, dtype, row_limit=None, backend=None, max_position=0):
            fb = build(cls, prefix, pool, seq, slot, fill, dtype, row_limit, backend, max_position)
            want = R.fork_layout(seq, prefix.batch)
            if fb.aux is not None:            # the reference fork attention's layout
                assert torch.equal(fb.aux.row_j, want.row_j) and torch.equal(fb.aux.pad_index, want.pad_index)
            _equal(R.fork_layout_impl(seq, prefix.batch, "cpu"), want)
            _equal(R.fork_layout_impl(seq, prefix.batch, "cpp"), want)
            rec.layouts += 1
            return fb

        monkeypatch.setattr(Evaluator, "plan", plan_spy)
        monkeypatch.setattr(ForkBatch, "build", classmethod(build_spy))
        monkeypatch.setattr(SlotPool, "copy_slots", copy_spy)


@pytest.mark.parametrize("rollouts", [1, 2, 3])
def test_spec_equals_engine_on_tiny_model_decodes(tiny, monkeypatch, rollouts):
    """Whole decodes with prefetch (bets with lead 1 and 2 share the calls), three sequences of
    different lengths (left padding); every plan and every fork layout is checked."""
    rec = _Recorder(monkeypatch)
    prompts = random_prompts(32, [2, 7, 4], seed=3)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = (torch.arange(L) >= torch.tensor([L - len(p) for p in prompts]).view(-1, 1)).long()
    out = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=8, alpha=0.2, horizon=3,
                                rollouts=rollouts, seed=[4, 5, 6], engine="fast", top_k=None,
                                rollout_top_k=None)
    assert rec.plans >= 6 and rec.layouts >= 6      # a call carries the plans of several evaluators
    assert {0, 1, 2} <= rec.leads and rec.ks == {rollouts}
    assert out.summary()["forwards_saved"] > 0


def test_spec_equals_engine_on_one_step_and_row_limits(tiny, batch7, monkeypatch):
    """One sample_step over seven sequences (horizon 4), and lookahead_entropy (per-row limits)."""
    rec = _Recorder(monkeypatch)
    _, logits, kv, mask = batch7
    epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=-0.7, horizon=4, rollouts=4, seed=2,
                             attention_mask=mask, top_k=None, rollout_top_k=None, max_rows=None)
    assert rec.plans >= 4
    n = rec.plans
    epic_kernels.lookahead_entropy(tiny, torch.tensor(random_prompts(32, [9], seed=5)[0]), horizon=3,
                                   rollouts=2)
    assert rec.plans >= n + 3


def test_import_loads_no_extension():
    """``import epic_kernels`` and the row module never load the compiled module."""
    import subprocess
    import sys

    code = ("import sys, epic_kernels, epic_kernels.ops.plan_rows, epic_kernels.ops.fork_layout; "
            "assert 'epic_kernels._C' not in sys.modules, 'loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
