#!/usr/bin/env python
"""Where a 500- and a 1,500-token calibration differ (docs/results.md, section 1): the same entropies, other texts.

Collects the lookahead entropies of the first 1,500 held-out GSM8K answer tokens once (the settings of
``exp_evidence.py``'s calibration: lines 0-39, chat template, horizon 4, 2 rollouts, 8 samples, top-k 50,
seed 0), then solves alpha* on all of them, on the first 500 prefixes (what the evidence run uses) and on
the other 1,000, and prints each text's mean lookahead entropy of the data tokens (mu_p) and of the model
samples (mu_q = mu_alpha at alpha 0). About 2 min here.

    python experiments/calibration_by_text.py
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)


def main() -> int:
    import torch

    from epic_kernels import defaults
    from epic_kernels.calibration import chat_pairs, collect_entropies, solve_alpha
    from epic_kernels.models import eos_ids, load_model

    ev.setup_torch(None)
    model, tok = load_model()
    recs = ev.load_gsm8k(ROOT / "experiments/data/gsm8k/test.jsonl", 40, 0)
    ctx, texts = chat_pairs(tok, [r["question"] for r in recs], [r["answer"] for r in recs],
                            eos_token_id=eos_ids(model, tok)[0])
    data = collect_entropies(model, texts, contexts=ctx, horizon=4, rollouts=2, samples=8, top_k=defaults.TOP_K,
                             rollout_top_k=defaults.ROLLOUT_TOP_K, max_tokens=1500, seed=0)

    def part(mask):
        return replace(data, h_data=data.h_data[mask], h_samples=data.h_samples[mask],
                       text_index=data.text_index[mask],
                       samples_tokens=None if data.samples_tokens is None else data.samples_tokens[mask])

    first = torch.arange(data.tokens) < 500
    print(f"{data.tokens} prefixes of {data.texts} texts")
    for name, d in [("all 1,500", data), ("first 500", part(first)), ("other 1,000", part(~first))]:
        r = solve_alpha(d)
        print(f"{name:12s} alpha* {r.alpha:.4f} (std. error {r.alpha_stderr:.3f})  mu_p {d.mu_p:.4f}  "
              f"mu_q {d.mu_alpha(0.0):.4f}  texts {sorted(set(d.text_index.tolist()))}")
    for i in sorted(set(data.text_index.tolist())):
        m = data.text_index == i
        print(f"text {i:2d}: {int(m.sum()):3d} tokens  mu_p {float(data.h_data[m].mean()):.3f}  "
              f"mu_q {float(data.h_samples[m].mean()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
