"""How far EPIC on llama.cpp is from EPIC on transformers for the same GGUF (reported, not asserted).

transformers dequantizes the embedded Q4_1 file to float32 and computes in float32; llama.cpp keeps
the Q4_1 weights and quantizes activations to 8 bits for its matmuls (and keeps K/V in f16), so the
two see different logits. Along each prompt's HF-engine decode (teacher forcing), this measures

* the logit discrepancy at every position: max and mean |l_llama - l_hf| over the vocabulary, and how
  often the two argmaxes agree;
* the token agreement of one EPIC step at horizon 1 (and at the defaults' horizon 4) on the same
  prefix with the same seed: the fraction of positions where both engines pick the same token.

    python experiments/llama_vs_hf.py [--tokens 16] [--alpha 0.5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = ["The history of the city is", "Once upon a time,", "def fibonacci(n):", "Water boils at",
           "Hello", "My favourite food is", "Paris is the", "The best way to learn is"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=50)
    args = p.parse_args(argv)

    import epic_kernels
    from epic_kernels.llama import LlamaModel
    from epic_kernels.llama import generate as llama_generate
    from epic_kernels.llama.scratch import ScratchModel
    from epic_kernels.models import embedded_model_path, load_model

    torch.set_num_threads(2)
    started = time.perf_counter()
    hf, tok = load_model(None)
    lm = LlamaModel(embedded_model_path())
    scratch = ScratchModel(lm, n_ctx=512)
    print(f"loaded both in {time.perf_counter() - started:.1f}s; {lm.path.name}: {lm.size_bytes / 1e6:.0f} MB on "
          f"llama.cpp, {sum(t.numel() * t.element_size() for t in hf.parameters()) / 1e6:.0f} MB of float32 on "
          "transformers")
    diffs, means, top1 = [], [], []
    agree = {1: [], 4: []}
    for n, text in enumerate(PROMPTS):
        ids = tok(text, return_tensors="pt")["input_ids"]
        out = epic_kernels.generate(hf, ids, max_new_tokens=args.tokens, alpha=args.alpha, horizon=1, seed=n,
                                    top_k=args.top_k, rollout_top_k=args.top_k)
        seq = out.sequences[0].tolist()
        with torch.no_grad():
            hf_logits = hf(input_ids=torch.tensor([seq])).logits[0]
        T = ids.shape[1]
        for t in range(T, len(seq) + 1):
            prefix = seq[:t]
            ll = scratch.logits_of(prefix)
            hl = hf_logits[t - 1]
            d = (ll - hl).abs()
            diffs.append(float(d.max()))
            means.append(float(d.mean()))
            top1.append(int(ll.argmax()) == int(hl.argmax()))
            if t == len(seq):
                break
            for k in agree:
                kw = dict(max_new_tokens=1, alpha=args.alpha, horizon=k, seed=1000 + t, top_k=args.top_k,
                          rollout_top_k=args.top_k)
                a = epic_kernels.generate(hf, torch.tensor([prefix]), **kw).new_tokens[0][0]
                b = llama_generate(lm, torch.tensor([prefix]), eos_token_id=None, **kw).new_tokens[0][0]
                agree[k].append(a == b)
        print(f"prompt {n}: {tok.decode(seq[T:])!r}")
    pct = lambda xs: 100.0 * sum(xs) / max(len(xs), 1)   # noqa: E731
    d = torch.tensor(diffs)
    print(f"\nlogits, {len(diffs)} positions: max |l_llama - l_hf| median {d.median():.3f}, max {d.max():.3f}; "
          f"mean over the vocabulary {sum(means) / len(means):.3f}; argmax agrees at {pct(top1):.1f} %")
    for k, xs in agree.items():
        print(f"one EPIC step (alpha {args.alpha}, horizon {k}, top-{args.top_k}, same prefix and seed): "
              f"same token at {pct(xs):.1f} % of {len(xs)} positions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
