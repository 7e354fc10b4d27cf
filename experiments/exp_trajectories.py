#!/usr/bin/env python
"""Entropy trajectories of one prompt under different decoders (paper Figure 1), embedded SmolLM2-135M.

Per generated token we record ``H(q(.|prefix))``, the entropy of the model's full next-token
distribution (measured after decoding, by teacher forcing, the same way for every method). The
"typical band" is the 10th-90th percentile of the same quantity, smoothed over --window tokens, on
held-out human GSM8K answers (lines [0, --band-texts)); a decoder "stays typical" when its smoothed
entropy stays inside it. Decoders: a human reference answer, low temperature, plain sampling
(temperature 1, no truncation), high temperature, and EPIC (alpha*, top_k 50, horizon 4, rollouts 2).

    python experiments/exp_trajectories.py --calibration out/calibration.json --plot docs/img/trajectories.png
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

PROMPT_LINE = 500


def parse(argv=None):
    p = ev.experiment_parser(__doc__, "smoke run: 12 tokens, 1 sample, small band")
    p.add_argument("--prompt-line", type=int, default=PROMPT_LINE, help="GSM8K line whose question is the prompt")
    p.add_argument("--prompt", default=None, help="use this prompt instead (no human reference then)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--samples", type=int, default=4, help="generations per decoder (seeds seed..seed+n-1)")
    p.add_argument("--low-temperature", type=float, default=0.3)
    p.add_argument("--high-temperature", type=float, default=1.6)
    p.add_argument("--alpha", type=float, default=None, help=f"EPIC alpha (default {ev.DEFAULT_ALPHA})")
    p.add_argument("--calibration", default=None, metavar="FILE.json", help="alpha from a calibration record")
    p.add_argument("--band-texts", type=int, default=100)
    p.add_argument("--window", type=int, default=8, help="running-mean window for the band test")
    args = p.parse_args(argv)
    if args.quick:
        args.max_new_tokens, args.samples, args.band_texts = 12, 1, 8
    return args


def running_mean(xs, w):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    f = int(k)
    return xs[f] + (xs[min(f + 1, len(xs) - 1)] - xs[f]) * (k - f)


def repeated_ngrams(tokens, n=4):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def run(args, model=None, tok=None) -> dict:
    model, tok, eos = ev.prepare(args, model, tok)
    alpha = ev.chosen_alpha(args)
    band_recs = ev.load_gsm8k(args.data, args.band_texts, 0)
    band_prompts = ev.prompt_ids(tok, [r["question"] for r in band_recs])
    band_refs = [tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos[0]] for r in band_recs]
    smoothed = [x for s in ev.score(model, band_prompts, band_refs) for x in running_mean(s.entropy, args.window)]
    band = (percentile(smoothed, 0.1), percentile(smoothed, 0.9))
    print(f"typical band (10-90% of {args.window}-token running mean on {args.band_texts} human answers): "
          f"[{band[0]:.2f}, {band[1]:.2f}] nats", file=sys.stderr)

    if args.prompt is None:
        rec = ev.load_gsm8k(args.data, 1, args.prompt_line)[0]
        question, reference = rec["question"], rec["answer"]
    else:
        question, reference = args.prompt, None
    prompt = ev.prompt_ids(tok, [question])[0]
    prompts = [prompt] * args.samples
    decoders = [("human reference", None)] if reference is not None else []
    decoders += [(f"low temperature {args.low_temperature}", ev.baseline("temperature", args.low_temperature)),
                 ("plain sampling (T=1)", ev.baseline("temperature", 1.0)),
                 (f"high temperature {args.high_temperature}", ev.baseline("temperature", args.high_temperature)),
                 (f"EPIC alpha={alpha:.3g}", ev.epic(alpha))]
    rows = []
    for label, m in decoders:
        t0 = time.perf_counter()
        if m is None:
            gens = [(tok(reference, add_special_tokens=False)["input_ids"] + [eos[0]])[:args.max_new_tokens]]
            ps = [prompt]
        elif m.hf is not None:
            gens = [ev.hf_generate(model, [prompt], m, max_new_tokens=args.max_new_tokens, seed=args.seed + i,
                                   eos=eos, pad_id=tok.pad_token_id or 0)[0] for i in range(args.samples)]
            ps = prompts
        else:
            gens, _ = ev.epic_generate(model, prompts, m.alpha, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                       eos=eos, pad_id=tok.pad_token_id or 0, progress=not args.no_progress)
            ps = prompts
        scored = ev.score(model, ps, gens)
        inside = [band[0] <= x <= band[1] for s in scored for x in running_mean(s.entropy, args.window)]
        rows.append(dict(decoder=label, entropy=[s.entropy for s in scored], texts=[tok.decode(g) for g in gens],
                         mean_entropy=ev.mean_of(scored, "entropy"), nll=ev.mean_of(scored, "nll"),
                         in_band=sum(inside) / max(len(inside), 1),
                         repeated_4grams=sum(repeated_ngrams(g) for g in gens) / len(gens),
                         mean_length=sum(map(len, gens)) / len(gens), samples=len(gens),
                         seconds=time.perf_counter() - t0))
        print(f"  {label:24s} mean H {rows[-1]['mean_entropy']:.2f}  in band {rows[-1]['in_band']:.0%}",
              file=sys.stderr)
    return dict(experiment="trajectories", alpha=alpha, band=band, window=args.window, question=question,
                rows=rows, settings=vars(args), machine=ev.machine())


def table(out) -> str:
    rows = [[r["decoder"], r["samples"], r["mean_entropy"], r["nll"], r["in_band"], r["repeated_4grams"],
             r["mean_length"]] for r in out["rows"]]
    return ev.md_table(["decoder", "samples", "mean H(q) [nats]", "mean -log q [nats]",
                        f"steps in band ({out['window']}-tok mean)", "repeated 4-grams", "mean length"], rows, 2)


def plot(out, path) -> None:
    plt = ev.plt()
    rows = out["rows"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.1 * len(rows)), sharex=True, sharey=True)
    axes = [axes] if len(rows) == 1 else list(axes)
    lo, hi = out["band"]
    top = max(max(r["entropy"][0]) for r in rows if r["entropy"][0]) * 1.05
    for ax, r, letter in zip(axes, rows, "abcdefgh"):
        h = r["entropy"][0]
        steps = range(1, len(h) + 1)
        ax.axhspan(lo, hi, color="0.85", label="typical band")
        ax.plot(steps, h, color="tab:blue", lw=0.8, alpha=0.45, label="H per step")
        ax.plot(steps, running_mean(h, out["window"]), color="tab:red" if "EPIC" not in r["decoder"] else "black",
                lw=2, label=f"{out['window']}-token mean")
        text = r["texts"][0].replace("\n", " ").replace("$", r"\$")
        text = text if len(text) <= 88 else text[:85] + "..."
        ax.set_title(f"({letter}) {r['decoder']}: in band {r['in_band']:.0%} of steps "
                     f"(over {r['samples']} sample{'s' if r['samples'] > 1 else ''})", fontsize=9, loc="left")
        ax.text(0.005, 0.96, text, transform=ax.transAxes, fontsize=7, va="top", family="monospace",
                bbox=dict(facecolor="white", alpha=0.75, lw=0))
        ax.set_ylim(0, top)
        ax.set_ylabel("H [nats]", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper right", ncol=3, framealpha=0.9)
    axes[-1].set_xlabel("generation step")
    fig.suptitle("Entropy trajectories, SmolLM2-135M-Instruct on one GSM8K question (first sample of each decoder)",
                 fontsize=10)
    ev.save_figure(fig, path)


def main(argv=None, model=None, tok=None) -> int:
    return ev.experiment_main(argv, model, tok, parse=parse, run=run, table=table, plot=plot,
                              headline=lambda args, out: (f"\nprompt: {out['question']!r}\ntypical band [{out['band'][0]:.2f}, "
                          f"{out['band'][1]:.2f}] nats; {args.samples} samples x {args.max_new_tokens} tokens "
                          f"per decoder\n"))


if __name__ == "__main__":
    sys.exit(main())
