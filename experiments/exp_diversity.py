#!/usr/bin/env python
"""Diversity of decoders (paper Table 1's diversity column), embedded SmolLM2-135M.

--prompts GSM8K questions (from line 500) x --samples generations each per decoder (50 by default).
Self-BLEU (sacrebleu sentence BLEU of each generation against the other generations of the same
prompt, averaged; lower = more diverse) and distinct-n (unique word n-grams / all n-grams among a
prompt's generations, averaged over prompts). The entropy rate H(q) of the generations (teacher
forced, as in exp_calibration.py) is reported alongside, because diversity means little without it:
high temperature is "diverse" by producing gibberish.

    python experiments/exp_diversity.py --calibration out/calibration.json --plot docs/img/diversity.png
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

START = 500
BASELINES = [("temperature", 1.0), ("temperature", 0.7), ("top-p", 0.9), ("top-p", 0.95), ("top-k", 50), ("min-p", 0.1),
             ("typical", 0.2)]


def parse(argv=None):
    p = ev.experiment_parser(__doc__, "smoke run: 1 prompt x 3 samples x 8 tokens")
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--samples", type=int, default=10, help="generations per prompt and decoder")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--alpha", type=float, default=None, help=f"EPIC alpha (default {ev.DEFAULT_ALPHA})")
    p.add_argument("--calibration", default=None, metavar="FILE.json", help="alpha from a calibration record")
    p.add_argument("--batch-size", type=int, default=25)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.samples, args.max_new_tokens = 1, 3, 8
    return args


def run(args, model=None, tok=None) -> dict:
    model, tok, eos = ev.prepare(args, model, tok)
    alpha = ev.chosen_alpha(args)
    recs = ev.load_gsm8k(args.data, args.prompts, START)
    base = ev.prompt_ids(tok, [r["question"] for r in recs])
    prompts = [p for p in base for _ in range(args.samples)]          # prompt-major: [p0 x S, p1 x S, ...]
    methods = [ev.baseline(f, v) for f, v in BASELINES] + [ev.epic(alpha)]
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        gens, stats = ev.decode(model, prompts, m, args, eos, tok.pad_token_id or 0)
        seconds = time.perf_counter() - t0
        texts = [tok.decode(g, skip_special_tokens=True) for g in gens]
        groups = [texts[i:i + args.samples] for i in range(0, len(texts), args.samples)]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        scored = ev.score(model, prompts, gens)
        rows.append(dict(method=m.name, family=m.family, generations=len(texts),
                         self_bleu=mean([ev.self_bleu(g) for g in groups]),
                         self_bleu_per_prompt=[ev.self_bleu(g) for g in groups],
                         distinct=[mean([ev.distinct_n(g, n) for g in groups]) for n in (1, 2, 3)],
                         distinct_all=[ev.distinct_n(texts, n) for n in (1, 2, 3)],
                         entropy_rate=ev.mean_of(scored, "entropy"), nll=ev.mean_of(scored, "nll"),
                         mean_length=mean([len(g) for g in gens]), seconds=seconds, epic_stats=stats,
                         texts=texts))
        print(f"  {m.name:16s} Self-BLEU {rows[-1]['self_bleu']:.1f}  distinct-2 {rows[-1]['distinct'][1]:.3f} "
              f"({seconds:.0f}s)", file=sys.stderr)
    return dict(experiment="diversity", alpha=alpha, rows=rows, settings=vars(args), machine=ev.machine(),
                start=START)


def per_prompt_self_bleu(r, samples) -> list[float]:
    if "self_bleu_per_prompt" in r:
        return r["self_bleu_per_prompt"]
    return [ev.self_bleu(r["texts"][i:i + samples]) for i in range(0, len(r["texts"]), samples)]


def table(out) -> str:
    S = out["settings"]["samples"]
    rows = [[r["method"], r["generations"], r["self_bleu"], ev.std_error(per_prompt_self_bleu(r, S)), *r["distinct"],
             r["distinct_all"][1], r["entropy_rate"], r["mean_length"]] for r in out["rows"]]
    return ev.md_table(["method", "generations", "Self-BLEU (lower = more diverse)",
                        "Self-BLEU std. error (over prompts)",
                        "distinct-1", "distinct-2", "distinct-3", "distinct-2 (all prompts)",
                        "entropy rate H(q) [nats/tok]", "mean length"], rows, 3)


def plot(out, path) -> None:
    plt = ev.plt()
    rows = out["rows"]
    S = out["settings"]["samples"]
    names = [r["method"] for r in rows]
    colors = ["black" if r["family"] == "EPIC" else "tab:blue" for r in rows]
    errs = [ev.std_error(per_prompt_self_bleu(r, S)) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    a.barh(names, [r["self_bleu"] for r in rows], xerr=errs, color=colors, capsize=3)
    a.invert_yaxis()
    a.set_xlabel("Self-BLEU within a prompt's generations (lower = more diverse)")
    a.set_title(f"(a) Self-BLEU, error bars: std. error over the {out['settings']['prompts']} prompts", fontsize=9)
    order = sorted(range(len(rows)), key=lambda i: rows[i]["entropy_rate"])
    for k, i in enumerate(order):
        r = rows[i]
        b.errorbar(r["entropy_rate"], r["self_bleu"], yerr=errs[i], fmt="o", color=colors[i], capsize=3, ms=5)
        b.annotate(r["method"], (r["entropy_rate"], r["self_bleu"]), fontsize=7,
                   xytext=(5, 5 if k % 2 == 0 else -11), textcoords="offset points")
    b.set_xlabel("entropy rate of the same generations H(q) [nats/token]")
    b.set_ylabel("Self-BLEU (lower = more diverse)")
    b.set_title("(b) diversity against entropy rate", fontsize=9)
    n = rows[0]["generations"] if rows else 0
    fig.suptitle(f"Diversity, SmolLM2-135M-Instruct on GSM8K: {out['settings']['prompts']} prompts x "
                 f"{S} samples = {n} generations per decoder, {out['settings']['max_new_tokens']} tokens each",
                 fontsize=10)
    ev.save_figure(fig, path)


def main(argv=None, model=None, tok=None) -> int:
    return ev.experiment_main(argv, model, tok, parse=parse, run=run, table=table, plot=plot,
                              headline=lambda args, out: (f"\nEPIC alpha = {out['alpha']:.4f}; {args.prompts} prompts x {args.samples} samples x "
                          f"{args.max_new_tokens} tokens per decoder\n"))


if __name__ == "__main__":
    sys.exit(main())
