"""Per-token cost along a long decode with ``sample_step`` in a user's own loop.

A loop that hands each step's ``kv`` back to the next should cost per token no more at the end of
a long decode than at the start, beyond what the model itself costs at the longer context. This
runs N ``sample_step`` calls (EPIC defaults: alpha 0.2, horizon 4, 2 rollouts, top-50 candidates and
rollout policy; end-of-sequence tokens do not stop it) and, interleaved with every step, one plain
forward of one token over a transformers ``DynamicCache`` of the same length (what a plain decoding
loop pays for the model at that position). It reports, per window of W tokens, the median EPIC
step time, the median plain forward time and their ratio: a flat ratio means no per-token cost
grows with the text beyond the model's own.

    python benchmarks/bench_long_decode.py --tokens 1024 --window 128 --json out/long_decode.json

A script, not a suite: what it measures is a trend along one long decode (per-window medians of
1,024 consecutive steps, ~10 minutes), not the repeated timing of one fixed piece of work that
pytest-benchmark does; it would not fit ``make bench``'s 15 minutes either.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # before torch: see docs/benchmarks.md

import torch  # noqa: E402

import epic_kernels  # noqa: E402
from epic_kernels import defaults  # noqa: E402
from epic_kernels.models import chat_prompt_ids, load_model  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and the ships she guides."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.disable_progress_bar()             # the GGUF conversion's bars
    model, tok = load_model()
    ids = chat_prompt_ids(tok, PROMPT)
    kw = dict(alpha=defaults.ALPHA, horizon=defaults.HORIZON, rollouts=defaults.ROLLOUTS, top_k=defaults.TOP_K,
              rollout_top_k=defaults.ROLLOUT_TOP_K, seed=args.seed)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        plain_kv = out.past_key_values                    # the plain loop's own cache
        step = epic_kernels.sample_step(out.logits[:, -1], out.past_key_values, model, **kw)
        epic_times, plain_times, calls = [], [], []
        t_start = time.perf_counter()
        for n in range(args.tokens):
            t0 = time.perf_counter()
            step = epic_kernels.sample_step(step.next_logits, step.kv, model, attention_mask=step.attention_mask,
                                            prefetched=step.prefetched, **kw)
            epic_times.append(time.perf_counter() - t0)
            calls.append(step.stats.forward_calls + step.stats.finish_calls)
            t0 = time.perf_counter()
            model(input_ids=step.tokens.view(1, 1), past_key_values=plain_kv, use_cache=True)
            plain_times.append(time.perf_counter() - t0)
            if (n + 1) % args.window == 0:
                print(f"{n + 1}/{args.tokens} tokens, {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    rows = []
    for lo in range(0, args.tokens, args.window):
        e, pl = epic_times[lo:lo + args.window], plain_times[lo:lo + args.window]
        me, mp = statistics.median(e), statistics.median(pl)
        rows.append(dict(tokens=f"{lo + 1}-{lo + len(e)}", context=int(ids.shape[1]) + lo + len(e),
                         epic_ms=1e3 * me, plain_ms=1e3 * mp, ratio=me / mp,
                         calls_per_token=sum(calls[lo:lo + args.window]) / len(e)))
    print("| tokens | context at end | EPIC step (median ms) | plain forward (median ms) | EPIC / plain | model calls per token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['context']} | {r['epic_ms']:.1f} | {r['plain_ms']:.1f} | {r['ratio']:.2f} | "
              f"{r['calls_per_token']:.2f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), prompt=PROMPT, windows=rows, torch=torch.__version__,
                           threads=torch.get_num_threads()), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
