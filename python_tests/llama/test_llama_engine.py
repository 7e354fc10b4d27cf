"""EPIC on llama.cpp (epic_kernels.llama): the engine's tokens are the reference lazy sampler's on
llama.cpp's own logits, every row's logits are a fresh context's for its text, forks copy no KV, and
the tokens do not depend on prefetch, reuse, the batch, the threads or max_rows."""
import sys

import pytest
import torch

from epic_kernels.core import EpicConfig
from epic_kernels.engine.runtime import CallRows
from epic_kernels.llama import LlamaRuntime, generate
from epic_kernels.llama.scratch import token_prefix
from epic_kernels.reference import exhaustive_sample, lazy_sample
from epic_kernels.truncation import truncate

from .conftest import PROMPTS, left_pad

TOP_K = 8          # small candidate sets keep the reference (every row decoded from scratch) quick
STEPS = 9


def reference_decode(scratch, prompt, steps, seed, cfg, sampler=lazy_sample):
    """The reference sampler's tokens for ``steps`` steps, every logits row from scratch."""
    text, out = list(prompt), []
    for _ in range(steps):
        logits = truncate(scratch.logits_of(text).view(1, -1), TOP_K, None, None)
        res = sampler(logits, token_prefix([text], torch.tensor([seed])), scratch, cfg)
        out.append(int(res.tokens[0]))
        text.append(out[-1])
    return out


def engine_decode(model, prompt, steps, seed, cfg, **kw):
    """The engine's tokens and, per step, whether the search had to evaluate (>= 2 survivors)."""
    out = generate(model, torch.tensor([prompt]), max_new_tokens=steps, alpha=cfg.alpha, horizon=cfg.horizon,
                   rollouts=cfg.rollouts, seed=seed, top_k=TOP_K, rollout_top_k=cfg.rollout_top_k,
                   eos_token_id=None, **kw)
    return out.new_tokens[0], [rec.survivors >= 2 for rec in out.steps]


# alpha of both signs, horizons 1-4, rollouts 1-4: 12 settings x 2 seeds x 9 steps = 216 (seed, step) cases
SETTINGS = [(1.5, 1, 1), (-1.5, 1, 3), (0.4, 2, 2), (-0.4, 2, 4), (1.0, 3, 1), (-1.0, 3, 2),
            (0.5, 4, 2), (-0.5, 4, 3), (0.8, 4, 4), (-0.8, 2, 1), (0.6, 3, 4), (-0.6, 4, 1)]


@pytest.mark.parametrize("alpha,horizon,rollouts", SETTINGS)
def test_tokens_equal_the_reference(llama_model, scratch, alpha, horizon, rollouts):
    """The engine (prefetch and reuse on, and both off) returns the reference lazy sampler's tokens,
    which are the exhaustive sampler's, on llama.cpp's logits."""
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=TOP_K)
    cases = searched = 0
    for i, seed in enumerate((11, 12)):
        prompt = PROMPTS[(i + len(str(alpha)) + horizon) % len(PROMPTS)]
        ref = reference_decode(scratch, prompt, STEPS, seed, cfg)
        tokens, search = engine_decode(llama_model, prompt, STEPS, seed, cfg)
        assert tokens == ref
        assert engine_decode(llama_model, prompt, STEPS, seed, cfg, prefetch=False, reuse=False)[0] == ref
        if seed == 11:         # lazy == exhaustive on the same logits
            assert reference_decode(scratch, prompt, 3, seed, cfg, exhaustive_sample) == ref[:3]
        cases += len(ref)
        searched += sum(search)
    assert cases == 2 * STEPS
    print(f"alpha={alpha} horizon={horizon} rollouts={rollouts}: {searched} of {cases} steps searched")
    assert searched >= cases // 2          # most cases exercise the search, not the first prune alone


class CheckedRuntime(LlamaRuntime):
    """A runtime that checks every row's logits against a fresh context's for the row's text."""

    scratch = None
    rows_checked = 0

    def run(self, rows):
        out = super().run(rows)
        for i in range(len(rows)):
            p = int(rows.path[i])
            text = self.texts[self.owner[p]][: self.origin[p]] + self.toks[p]
            assert text[-1] == int(rows.tokens[i]) and len(text) == int(rows.positions[i]) + 1
            assert torch.equal(out[i], self.scratch.logits_of(text)), f"row {i} of a call of {len(rows)}"
            type(self).rows_checked += 1
        return out


def test_every_row_is_a_fresh_contexts(llama_model, scratch, monkeypatch):
    """Bit for bit, through forks, hand-overs (prefetch, reuse), commits, a batch of three and cache
    rebuilds (a small n_ctx)."""
    gen = sys.modules["epic_kernels.llama.generate"]       # the module (the package exports the function)
    monkeypatch.setattr(CheckedRuntime, "scratch", scratch)
    monkeypatch.setattr(gen, "LlamaRuntime", CheckedRuntime)
    ids, mask = left_pad(PROMPTS[:3])
    rts = []
    out = generate(llama_model, ids, attention_mask=mask, max_new_tokens=14, alpha=0.5, horizon=3, rollouts=3,
                   seed=5, top_k=6, rollout_top_k=6, eos_token_id=None, n_ctx=256, runtime_out=rts)
    assert CheckedRuntime.rows_checked > 100
    assert rts[0].rebuilds >= 1                       # the checked rows include rows after a rebuild
    assert all(len(t) == 14 for t in out.new_tokens)
    rts[0].close()


def test_batch_threads_and_max_rows_do_not_change_tokens(llama_model):
    """A prompt alone == in a batch of 8 (left padded), threads 1 == 2, max_rows 8 == default; the same
    seed gives the same tokens."""
    kw = dict(max_new_tokens=10, alpha=0.4, horizon=3, rollouts=2, top_k=8, rollout_top_k=8, eos_token_id=None)
    ids, mask = left_pad(PROMPTS)
    batch = generate(llama_model, ids, attention_mask=mask, seed=[100 + b for b in range(8)], **kw).new_tokens
    for b in (0, 4, 7):
        alone = generate(llama_model, torch.tensor([PROMPTS[b]]), seed=100 + b, threads=1, **kw).new_tokens[0]
        assert alone == batch[b]
    again = generate(llama_model, torch.tensor([PROMPTS[2]]), seed=102, threads=2, max_rows=8, **kw).new_tokens[0]
    assert again == batch[2]
    assert len({tuple(t) for t in batch}) > 1


def test_forks_copy_no_kv(llama_model):
    """One step with 4 rollouts to depth 4 over a 300-token prefix: llama.cpp's own state holds the
    prefix and one cell per row fed, not a prefix per path."""
    prompt = (PROMPTS[0] + PROMPTS[2] + PROMPTS[6]) * 20
    L = len(prompt)

    def state_bytes(toks):
        rt = LlamaRuntime(llama_model, 1, 1024)
        rt.prefill([toks])
        size = rt.state_bytes()
        rt.close()
        return size

    per_cell = (state_bytes(prompt) - state_bytes(prompt[:L // 2])) / (L - L // 2)
    rts = []
    generate(llama_model, torch.tensor([prompt]), max_new_tokens=1, alpha=1.5, horizon=4, rollouts=4, top_k=20,
             rollout_top_k=20, seed=3, eos_token_id=None, runtime_out=rts, prefetch=False)
    rt = rts[0]
    rt.begin_step()
    rows = rt.total_rows
    cells = rt.state_bytes() / per_cell
    assert rows >= 13                                  # candidates went deeper on 4 rollouts
    assert rt.in_use() >= 4
    assert rt.cells == L + rows + rt.pads              # one cell written per row (and padding token), none per fork
    # llama.cpp's state also writes each cell's sequence ids (4 bytes each; the prefix cells carry every
    # path's): a little above L + rows cells' worth, and far from a prefix per path (in_use() x L)
    assert L + rows + rt.pads - 1 <= cells <= (L + rows + rt.pads) * 1.02, (cells, L, rows, rt.pads)
    rt.close()


def test_few_sequence_ids_do_not_change_tokens(llama_model):
    """With 48 sequence ids (43 for paths) for a batch of three, steps run out of paths: the engine drops bets and
    gives back paths it evaluates again, and the tokens are those of a roomy context."""
    kw = dict(max_new_tokens=8, alpha=0.6, horizon=3, rollouts=2, top_k=10, rollout_top_k=10, eos_token_id=None, seed=7)
    ids, mask = left_pad(PROMPTS[3:6])
    roomy = generate(llama_model, ids, attention_mask=mask, **kw).new_tokens
    rts = []
    tight = generate(llama_model, ids, attention_mask=mask, n_seq_max=48, runtime_out=rts, **kw).new_tokens
    assert tight == roomy
    rt = rts[0]
    rt.begin_step()
    assert rt.pool.slots == 43 and rt.pool.shortages > 0       # it did run short, and recovered
    rt.close()


def test_any_call_size_and_cache_size_give_the_same_logits(llama_model, scratch):
    """Calls of 1 row over >= 512 cells and of 130 rows (three ubatches) give a fresh context's logits
    bit for bit, and a decode that rebuilds its cache (n_ctx 512) the same entropies, i.e. the same
    logits, as one that never does."""
    prompt = PROMPTS[0] * 60                              # 360 tokens: the single rows see > 512 cells
    rt = LlamaRuntime(llama_model, 1, 2048)
    rt.prefill([prompt])
    toks = list(range(1000, 1130))
    for n, lo in ((130, 0), (1, 0), (1, 7), (64, 3)):
        p = rt.take(n)
        out = rt.run(CallRows(torch.zeros(n, dtype=torch.long), p, torch.zeros(n, dtype=torch.long),
                              torch.tensor(toks[lo:lo + n]), torch.full((n,), len(prompt))))
        for i in range(n):
            assert torch.equal(out[i], scratch.logits_of(prompt + [toks[lo + i]])), (n, i)
        rt.release(p.tolist())
    assert rt.cells > 512 and rt.pads >= 2
    rt.close()
    kw = dict(max_new_tokens=40, alpha=0.3, horizon=3, rollouts=2, top_k=20, rollout_top_k=20, eos_token_id=None,
              seed=2)
    rts = []
    small = generate(llama_model, torch.tensor([PROMPTS[1]]), n_ctx=512, runtime_out=rts, **kw)
    large = generate(llama_model, torch.tensor([PROMPTS[1]]), n_ctx=8192, **kw)
    assert rts[0].rebuilds >= 1
    assert small.entropies == large.entropies and small.new_tokens == large.new_tokens
    rts[0].close()
