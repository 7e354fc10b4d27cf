#!/usr/bin/env python
"""The max_rows bound gives the uncapped tokens on the embedded model, in float64 (docs/engine.md
"Where the tokens can differ"): the check that found a defect of the bound (fixed in 4ca684a), where
no rounding tie can explain a difference.

The first 9 evidence prompts (GSM8K lines 500-508, one batch, seed 0, alpha 0.2729, 40 tokens, the
engine's defaults otherwise) in float64, with max_rows 24 and uncapped, reuse on and off; then the cap
again with the candidate state's ``trim`` or ``evict`` disabled in turn (how the defect was narrowed), and
with prefetch off (against the uncapped run without prefetch). Prints, per configuration, each
sequence's first token that differs from the uncapped run (None: the same 40 tokens; every entry is
None since the fix, and before it 4 of 9 (reuse off) and 2 (reuse on) were not). About 11 min here.

    python experiments/max_rows_exactness.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)
from experiments.exp_evidence import RESULTS, eval_prompts  # noqa: E402


def main() -> int:
    import torch

    from epic_kernels.engine.state import CandidateState
    from epic_kernels.models import eos_ids, load_model

    ev.setup_torch(None)
    model, tok = load_model(dtype=torch.float64)
    eos, pad = eos_ids(model, tok), tok.pad_token_id or 0
    prompts, alpha = eval_prompts(tok, 9), ev.read_alpha(RESULTS)

    def run(reuse, max_rows, prefetch=True):
        return ev.epic_generate(model, prompts, alpha, max_new_tokens=40, seed=0, eos=eos, batch_size=9,
                                pad_id=pad, progress=False, reuse=reuse, max_rows=max_rows, prefetch=prefetch)[0]

    def first_diff(out, base):
        return [next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(out, base)]

    base = run(False, None)
    for reuse, max_rows in [(True, None), (False, 24), (True, 24)]:
        print(f"reuse={reuse} max_rows={max_rows}: {first_diff(run(reuse, max_rows), base)}", flush=True)
    trim, evict = CandidateState.trim, CandidateState.evict
    try:
        CandidateState.trim = lambda self: None
        print(f"reuse=False max_rows=24, no trim: {first_diff(run(False, 24), base)}", flush=True)
        CandidateState.trim, CandidateState.evict = trim, (lambda self, room, busy: None)
        print(f"reuse=False max_rows=24, no evict: {first_diff(run(False, 24), base)}", flush=True)
        CandidateState.evict = evict
        base_np = run(False, None, prefetch=False)
        print(f"prefetch=False, reuse=False max_rows=24 vs uncapped: {first_diff(run(False, 24, prefetch=False), base_np)}",
              flush=True)
    finally:
        CandidateState.trim, CandidateState.evict = trim, evict
    return 0


if __name__ == "__main__":
    sys.exit(main())
