"""End to end on a device: EPIC's fast engine against Hugging Face top-p sampling on a small Llama
built from a config (random weights, nothing downloaded). ``make gpu-check``'s ``e2e`` step.

    python tools/gpu_e2e.py --device cuda --json out.json   # bfloat16, a ~100M-parameter Llama
    python tools/gpu_e2e.py --device cpu --quick            # float32, a tiny Llama (checks this script)

Reports tokens/s of both decoders over the same prompts (one warm-up each, then timed with the
device synchronized), EPIC's model calls per token, which fork attention backend ran (it must be
Triton on CUDA), and on a short decode how many sequences the fast engine gives the reference
engine's tokens (in bfloat16 a near-tie may fall either way: docs/engine.md; token equality on the
device is asserted in float64 by python_tests/gpu/test_cuda.py). Exits 1 if EPIC fails to decode,
emits an out-of-vocabulary token or (on CUDA) does not run the Triton fork attention.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(device: str, quick: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cuda = device.startswith("cuda")
    if cuda and not quick:
        cfg = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                   num_attention_heads=12, num_key_value_heads=4)                  # head_dim 64, GQA 3
    else:
        cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=4096, initializer_range=0.05, **cfg)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    return model, config, dtype


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    import epic_kernels
    import epic_kernels.engine.attention as att
    cuda = args.device.startswith("cuda")
    model, config, dtype = build(args.device, args.quick)
    B, P = (4, 64) if cuda and not args.quick else (2, 8)
    new = 32 if cuda and not args.quick else 4
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (B, P), generator=g).to(args.device)
    mask = torch.ones_like(ids)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def hf(n):
        torch.manual_seed(0)
        return model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.95, top_k=0, max_new_tokens=n,
                              min_new_tokens=n)

    used = {"triton": 0}
    real = att.fork_attention_impl

    def spy(*a, **k):
        backend = a[13] if len(a) > 13 else k.get("backend")
        used["triton"] += backend == "triton"
        return real(*a, **k)

    kw = dict(attention_mask=mask, alpha=0.2, horizon=4, rollouts=2, top_k=50, rollout_top_k=50,
              seed=list(range(B)))

    def epic(n, engine="fast"):
        return epic_kernels.generate(model, ids, max_new_tokens=n, engine=engine, **kw)

    report = dict(device=args.device, dtype=str(dtype), batch=B, prompt=P, new_tokens=new,
                  model=dict(layers=config.num_hidden_layers, hidden=config.hidden_size,
                             heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                             vocab=config.vocab_size),
                  gpu=torch.cuda.get_device_name(0) if cuda else None)
    problems = []
    with torch.no_grad():
        hf(2)
        sync()
        t = time.perf_counter()
        out = hf(new)
        sync()
        report["hf_top_p_s"] = time.perf_counter() - t
        report["hf_tokens_per_s"] = B * new / report["hf_top_p_s"]
        assert out.shape == (B, P + new)
        att.fork_attention_impl = spy                       # count the backend every layer call ran
        try:
            epic(2)
            sync()
            used["triton"] = 0
            t = time.perf_counter()
            res = epic(new)
            sync()
        finally:
            att.fork_attention_impl = real
        report["epic_s"] = time.perf_counter() - t
        toks = [len(t) for t in res.new_tokens]
        report["epic_tokens_per_s"] = sum(toks) / report["epic_s"]
        report["epic_over_hf_time"] = report["epic_s"] / report["hf_top_p_s"]
        report["epic_summary"] = res.summary() if hasattr(res, "summary") else None
        report["fork_attention_triton_layer_calls"] = used["triton"]
        if toks != [new] * B:
            problems.append(f"EPIC decoded {toks} tokens, expected {new} each")
        if any(not (0 <= t < config.vocab_size) for row in res.new_tokens for t in row):
            problems.append("EPIC emitted an out-of-vocabulary token")
        if cuda and used["triton"] == 0:
            problems.append("the fast engine did not run the Triton fork attention on CUDA")
        short = min(new, 6)
        fast, ref = epic(short), epic(short, "reference")
        report["fast_equals_reference"] = f"{sum(a == b for a, b in zip(fast.new_tokens, ref.new_tokens))} of {B} " \
                                          f"sequences ({short} tokens, {dtype})"
    report["problems"] = problems
    report["ok"] = not problems
    print(json.dumps(report, indent=1, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
