"""The fast engine against the reference sampler, the naive baseline and HF top-p, step by step.

On the embedded model, 2 threads. Teacher-forced: each prompt is decoded for ``--steps`` steps along
one trajectory (the fast engine's own tokens); at every prefix each sampler runs on the same logits,
cache and seed, in an order that alternates from step to step (A B C, C B A, ...), so background
load hits them alike. Reported, per setting (alpha 0.2, horizon 4, rollouts 2; top-k 50 truncation
of candidates and rollout policy, and the full vocabulary):

* time ratios: reference / fast (target >= 10x), naive / fast (target >= 2x), each as the ratio of
  total times over the same steps and as the median of per-step ratios;
* throughput of each sampler as a fraction of HF ``generate(do_sample=True, top_p=0.9)`` decode
  throughput on the same prompt, measured in the same run (per-token time = (T(n+1) - T(1)) / n,
  so the prompt's prefill cancels);
* forward calls per step (target: at most ``horizon``), forward tokens per step beside the
  algorithmic minimum ``evaluated_depth1 + rollouts * sum(depth reached - 1)`` (depth of each
  deeper evaluation, read from the engine's evaluator), survivors and evaluations per step beside
  the Lemma 4.1 prediction ``sum_i a_i e^w / (1 + a_i e^w)``, ``w = |alpha| k log|supp pi|``, from
  the actual logits;
* token agreement of all samplers at every step (exactness is the contract).

The fast engine runs with ``advance=True`` (it also returns the next logits and cache, as a decoding
loop needs); the naive baseline likewise (winner's depth-1 row, or one plain forward); the reference
runs with ``advance=False`` (its time does not include the loop's forward: a bias in its favour), so
on the reference steps the fast engine is also timed with ``advance=False`` for a like-for-like ratio.

    python benchmarks/bench_engine.py                       # the docs/benchmarks.md table
    python benchmarks/bench_engine.py --quick
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)
from benchmarks.naive_baseline import naive_sample  # noqa: E402

import torch  # noqa: E402

import epic_kernels  # noqa: E402
from epic_kernels.truncation import truncate  # noqa: E402

SETTINGS = {"topk50": ("top-k 50", 50, 50), "full": ("full vocab", None, None)}


def lemma_prediction(logits: torch.Tensor, alpha: float, horizon: int, rollout_top_k) -> float:
    """Paper Lemma 4.1: expected candidates within ``w`` of the max, ``sum a e^w / (1 + a e^w)``."""
    V = logits.shape[-1]
    w = abs(alpha) * horizon * math.log(min(V, rollout_top_k) if rollout_top_k else V)
    a = torch.softmax(logits.double(), -1)
    a = a[a > 0]
    ew = math.exp(w)
    return float((a * ew / (1 + a * ew)).sum())


def hf_per_token(model, ids, n: int, repeats: int, seed: int) -> tuple[list, list]:
    """Interleaved HF top-p runs of 1 and n+1 new tokens; returns the two lists of seconds."""
    mask = torch.ones_like(ids)
    t1, tn = [], []
    for r in range(repeats):
        t1.append(C.hf_topp(model, ids, mask, 1, seed + r))
        tn.append(C.hf_topp(model, ids, mask, n + 1, seed + r))
    return t1, tn


@torch.no_grad()
def run_setting(model, prompts_ids, key, args, hf_times):
    name, top_k, rtop_k = SETTINGS[key]
    kw = dict(alpha=args.alpha, horizon=args.horizon, rollouts=args.rollouts, rollout_top_k=rtop_k, top_k=top_k)
    ekw = dict(kw, block_size=args.block_size)        # the naive baseline has no blocks
    steps = []
    for p, ids in enumerate(prompts_ids):
        t1, tn = hf_per_token(model, ids, args.hf_tokens, args.hf_repeats, args.seed)
        hf_times["t1"] += t1
        hf_times["tn"] += tn
        out = model(input_ids=ids, use_cache=True)
        logits, kv = out.logits[:, -1, :], out.past_key_values
        prefetched = None
        seed = args.seed + p
        bar = C.progress_bar(range(args.steps), args.no_progress, desc=f"{name} prompt {p}")
        for t in bar:
            with_ref = t < args.reference_steps
            names = ["fast", "naive"] + (["fast_noadv", "reference"] if with_ref else [])
            if t % 2:
                names.reverse()
            res, secs = {}, {}
            for s in names:
                if s == "fast":
                    fn = lambda: epic_kernels.sample_step(logits, kv, model, seed=seed, engine="fast",
                                                          advance=True, prefetched=prefetched, **ekw)
                elif s == "fast_noadv":
                    fn = lambda: epic_kernels.sample_step(logits, kv, model, seed=seed, engine="fast",
                                                          advance=False, **ekw)
                elif s == "naive":
                    fn = lambda: naive_sample(logits, kv, model, seed=seed, advance=True, **kw)
                else:
                    fn = lambda: epic_kernels.sample_step(logits, kv, model, seed=seed, engine="reference",
                                                          advance=False, **ekw)
                res[s], secs[s] = C.timed(fn)
                if s == "fast":
                    min_tok = res[s].stats.min_forward_tokens
            f, nv = res["fast"], res["naive"]
            st = f.stats
            row = dict(prompt=p, step=t, token=int(f.tokens[0]),
                       t_fast=secs["fast"], t_naive=secs["naive"], t_ref=secs.get("reference"),
                       t_fast_noadv=secs.get("fast_noadv"),
                       agree_naive=bool(torch.equal(f.tokens, nv.tokens)),
                       agree_ref=bool(torch.equal(f.tokens, res["reference"].tokens)) if with_ref else None,
                       survivors=int(st.survivors.sum()), depth1=int(st.evaluated_depth1.sum()),
                       deeper=int(st.evaluated_deeper.sum()), calls=st.forward_calls,
                       finish_calls=st.finish_calls, fwd_tokens=st.forward_tokens,
                       prefetch_rows=st.prefetch_rows,
                       prefetch_rows_won=st.prefetch_rows_won,
                       adopted=st.adopted, adopted_rows=st.adopted_rows,
                       min_tokens=min_tok, lemma=lemma_prediction(truncate(logits, top_k), args.alpha,
                                                                  args.horizon, rtop_k),
                       naive_calls=nv.stats.forward_calls + nv.stats.finish_calls,
                       naive_epic_calls=nv.stats.forward_calls, naive_tokens=nv.stats.forward_tokens,
                       ref_calls=res["reference"].stats.forward_calls if with_ref else None,
                       ref_tokens=res["reference"].stats.forward_tokens if with_ref else None)
            steps.append(row)
            if not (row["agree_naive"] and row["agree_ref"] in (None, True)):
                print(f"\n[disagreement] {name} prompt {p} step {t}: fast {row['token']} naive "
                      f"{int(nv.tokens[0])} reference "
                      f"{int(res['reference'].tokens[0]) if with_ref else '-'}", file=sys.stderr)
            bar.set_postfix(fast=f"{secs['fast']:.2f}s", naive=f"{secs['naive']:.2f}s")
            # follow the fast engine's trajectory, handing it what it prefetched for the next step
            logits, kv, prefetched = f.next_logits, f.kv, f.prefetched
        t1, tn = hf_per_token(model, ids, args.hf_tokens, args.hf_repeats, args.seed + 100)
        hf_times["t1"] += t1
        hf_times["tn"] += tn
    return steps


def summarize(key, steps, hf_tok_s, args):
    n = len(steps)
    mean = lambda k: sum(r[k] for r in steps) / n
    ref_steps = [r for r in steps if r["t_ref"] is not None]
    tot = lambda rs, k: sum(r[k] for r in rs)
    fast_tps = n / tot(steps, "t_fast")
    naive_tps = n / tot(steps, "t_naive")
    ref_tps = len(ref_steps) / tot(ref_steps, "t_ref") if ref_steps else float("nan")
    return dict(
        setting=SETTINGS[key][0], steps=n, reference_steps=len(ref_steps),
        ref_over_fast=tot(ref_steps, "t_ref") / tot(ref_steps, "t_fast") if ref_steps else float("nan"),
        ref_over_fast_median=C.median([r["t_ref"] / r["t_fast"] for r in ref_steps]),
        ref_over_fast_noadv=(tot(ref_steps, "t_ref") / tot(ref_steps, "t_fast_noadv")) if ref_steps else float("nan"),
        naive_over_fast=tot(steps, "t_naive") / tot(steps, "t_fast"),
        naive_over_fast_median=C.median([r["t_naive"] / r["t_fast"] for r in steps]),
        fast_tok_s=fast_tps, naive_tok_s=naive_tps, ref_tok_s=ref_tps, hf_tok_s=hf_tok_s,
        fast_vs_hf=fast_tps / hf_tok_s, naive_vs_hf=naive_tps / hf_tok_s, ref_vs_hf=ref_tps / hf_tok_s,
        fast_ms_median=C.median([r["t_fast"] for r in steps]) * 1e3,
        calls=mean("calls"), finish_calls=mean("finish_calls"), fwd_tokens=mean("fwd_tokens"),
        prefetch_rows=mean("prefetch_rows"), prefetch_rows_won=mean("prefetch_rows_won"),
        adopted=mean("adopted"), adopted_rows=mean("adopted_rows"),
        min_tokens=mean("min_tokens"), naive_calls=mean("naive_calls"), naive_tokens=mean("naive_tokens"),
        ref_calls=tot(ref_steps, "ref_calls") / max(len(ref_steps), 1),
        ref_tokens=tot(ref_steps, "ref_tokens") / max(len(ref_steps), 1),
        survivors=mean("survivors"), lemma=mean("lemma"), depth1=mean("depth1"), deeper=mean("deeper"),
        agree_naive=sum(r["agree_naive"] for r in steps),
        agree_ref=sum(bool(r["agree_ref"]) for r in ref_steps))


def main(argv=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="teacher-forced steps per prompt and setting")
    p.add_argument("--prompts", type=int, default=2, help="GSM8K prompts (from the first)")
    p.add_argument("--reference-steps", type=int, default=None,
                   help="time the (slow) reference only on the first N steps of each prompt (default: all)")
    p.add_argument("--settings", default="topk50,full", help="comma list of: " + ",".join(SETTINGS))
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--rollouts", type=int, default=2)
    p.add_argument("--block-size", type=int, default=None,
                   help="best-first block size of fast and reference (default: the library's)")
    p.add_argument("--hf-tokens", type=int, default=32, help="HF top-p run length for its per-token time")
    p.add_argument("--hf-repeats", type=int, default=2, help="HF runs before and after each prompt's steps")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.hf_tokens, args.hf_repeats = 3, 1, 8, 1
    if args.reference_steps is None:
        args.reference_steps = args.steps
    if args.block_size is None:
        args.block_size = C.library_block_size()
    C.setup_torch(args.threads)
    model, tok, load_s = C.load(args.model)
    prompts_ids = C.chat_prompts(tok, args.data, args.prompts)
    hf_times = {"t1": [], "tn": []}
    per_setting = {}
    for key in args.settings.split(","):
        per_setting[key] = run_setting(model, prompts_ids, key, args, hf_times)
    hf_tok = args.hf_tokens / (C.median(hf_times["tn"]) - C.median(hf_times["t1"]))
    summaries = [summarize(k, s, hf_tok, args) for k, s in per_setting.items()]

    print(f"\n## bench_engine: alpha {args.alpha}, horizon {args.horizon}, rollouts {args.rollouts}, "
          f"block size {args.block_size}, {args.threads} threads, git {C.git_revision()}, {args.prompts} prompt(s) x {args.steps} steps (reference on "
          f"{args.reference_steps}), prompt lengths {[int(i.shape[1]) for i in prompts_ids]}\n")
    print(f"HF generate(do_sample=True, top_p=0.9) decode: {hf_tok:.2f} tokens/s (median of "
          f"{len(hf_times['tn'])} runs); GPU: none\n")
    print("### Speed (ratios measured in this run)\n")
    print(C.md_table(
        ["setting", "reference / fast (total)", "(median per step)", "reference / fast, both advance=False",
         "naive / fast (total)", "(median per step)",
         "fast x HF top-p", "naive x HF top-p", "reference x HF top-p", "fast ms/step (median)"],
        [[s["setting"], s["ref_over_fast"], s["ref_over_fast_median"], s["ref_over_fast_noadv"], s["naive_over_fast"],
          s["naive_over_fast_median"], s["fast_vs_hf"], s["naive_vs_hf"], s["ref_vs_hf"], s["fast_ms_median"]]
         for s in summaries]))
    print("\n### Work per step (means over steps)\n")
    print(C.md_table(
        ["setting", "fast calls", "+ finish calls", "naive calls (incl. finish)", "reference calls",
         "fast fwd tokens", "of which prefetched for the next step", "... on bets that lost",
         "own rows + adopted rows", "algorithmic min", "naive fwd tokens", "reference fwd tokens"],
        [[s["setting"], s["calls"], s["finish_calls"], s["naive_calls"], s["ref_calls"], s["fwd_tokens"],
          s["prefetch_rows"], s["prefetch_rows"] - s["prefetch_rows_won"],
          s["fwd_tokens"] - s["prefetch_rows"] + s["adopted_rows"], s["min_tokens"], s["naive_tokens"],
          s["ref_tokens"]] for s in summaries]))
    print("\n### Candidates per step against Lemma 4.1\n")
    print(C.md_table(
        ["setting", "survivors", "Lemma 4.1 prediction", "evaluated at depth 1", "deeper evaluations",
         "fast = naive", "fast = reference"],
        [[s["setting"], s["survivors"], s["lemma"], s["depth1"], s["deeper"],
          f"{s['agree_naive']}/{s['steps']}", f"{s['agree_ref']}/{s['reference_steps']}"] for s in summaries]))
    C.write_json(args.json, dict(machine=C.machine(), args=vars(args), load_seconds=load_s, hf_tok_s=hf_tok,
                                 hf_times=hf_times, summaries=summaries, steps=per_setting))
    return 0 if all(s["agree_naive"] == s["steps"] and s["agree_ref"] == s["reference_steps"]
                    for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
