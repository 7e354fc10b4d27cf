#!/usr/bin/env python
"""Calibration of decoding methods to the model's cross-entropy (paper Figure 4), embedded SmolLM2-135M.

1. alpha* by ``calibrate_alpha`` on held-out GSM8K answers (lines [0, --cal-texts) of the test file),
   each answer scored as the model's reply to its question (chat template), calculator annotations
   ``<<...>>`` removed.
2. Evaluation prompts: GSM8K questions from line 500 on (disjoint from step 1). The reference
   cross-entropy of prompt i is the model's mean ``-log q`` on the first --max-new-tokens tokens of its
   human answer (+ EOS).
3. Every method decodes one continuation per prompt (EPIC through ``epic_kernels.generate`` with the
   engine's defaults top_k 50 / rollout_top_k 50 / horizon 4 / rollouts 2; the rest through HF
   ``model.generate``). Each continuation is then measured under the model: the entropy rate (mean
   ``H(q(.|prefix))`` per generated token, the paper's "mean conditional entropy of generated
   sequences") and its mean ``-log q``.
4. Calibration error (paper Figure 4, Braverman et al. 2020) = |entropy rate of the generations -
   reference cross-entropy|, both averaged over all tokens; also the per-prompt mean |ER_i - CE_i| and
   the curve over CE bins (the plot). Beside it, the typicality gap |ER - H_ref|, where H_ref is the
   model's mean entropy along the human answers themselves: that is the quantity EPIC's moment
   matching targets (mu_p is the lookahead entropy after the data's own tokens).
5. EPIC runs at alpha* and at the --epic-alphas operating points, to show the knob.

    python experiments/exp_calibration.py --json out/calibration.json --plot docs/img/calibration.png
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

EVAL_START = 500
FULL = [("top-p", 0.8), ("top-p", 0.9), ("top-p", 0.95), ("top-k", 10), ("top-k", 50), ("min-p", 0.05),
        ("min-p", 0.1), ("typical", 0.2), ("typical", 0.5), ("typical", 0.95), ("temperature", 0.7),
        ("temperature", 1.0), ("temperature", 1.3)]
# typical 0.9 is left out: at mass 0.9 typical sampling removed exactly the tokens top-p 0.9 removed on
# this model (identical generations for the same seed), so it added nothing
QUICK = [("top-p", 0.9), ("min-p", 0.1), ("temperature", 1.0)]
CURVE = ["top-p 0.9", "top-k 50", "min-p 0.1", "typical 0.2", "temperature 1.0"]   # plotted curves


def parse(argv=None):
    p = ev.experiment_parser(__doc__, "smoke run: 2 prompts, 8 tokens, tiny calibration",
                             "write all results (key 'alpha' = alpha*)")
    p.add_argument("--prompts", type=int, default=16, help="evaluation prompts (one generation each)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--cal-texts", type=int, default=40, help="held-out answers for calibration")
    p.add_argument("--cal-tokens", type=int, default=400, help="held-out answer tokens for calibration")
    p.add_argument("--samples", type=int, default=8, help="importance samples per prefix")
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--rollouts", type=int, default=2)
    p.add_argument("--alpha", type=float, default=None, help="skip calibration and use this alpha")
    p.add_argument("--calibration", default=None, metavar="FILE.json", help="skip calibration: alpha from here")
    p.add_argument("--epic-alphas", type=float, nargs="*", default=[],
                   help="extra EPIC operating points besides alpha* (each ~2-10 min; docs use -0.5 1.0)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.cal_texts, args.cal_tokens = 2, 8, 2, 12
        args.samples, args.horizon, args.epic_alphas = 4, 2, []
    return args


def calibrate(args, model, tok, eos):
    from epic_kernels.calibration import calibrate_alpha, chat_pairs

    if args.alpha is not None:
        return args.alpha, dict(source="--alpha")
    if args.calibration:
        return ev.read_alpha(args.calibration), dict(source=args.calibration)
    recs = ev.load_gsm8k(args.data, args.cal_texts, 0)
    ctx, texts = chat_pairs(tok, [r["question"] for r in recs], [r["answer"] for r in recs], eos_token_id=eos[0])
    res = calibrate_alpha(model, texts, contexts=ctx, horizon=args.horizon, rollouts=args.rollouts,
                          samples=args.samples, top_k=50, rollout_top_k=50, max_tokens=args.cal_tokens,
                          seed=args.seed, progress=not args.no_progress)
    return res.alpha, dict(source="calibrate_alpha", **res.to_dict())


def bins(values, n_bins):
    order = sorted(range(len(values)), key=lambda i: values[i])
    size = max(1, len(order) // n_bins)
    return [order[i:i + size] for i in range(0, len(order), size)][:n_bins] if order else []


def run(args, model=None, tok=None) -> dict:
    model, tok, eos = ev.prepare(args, model, tok)
    t0 = time.perf_counter()
    alpha, cal = calibrate(args, model, tok, eos)
    cal_s = time.perf_counter() - t0
    print(f"alpha* = {alpha:.4f} ({cal['source']}, {cal_s:.0f}s)", file=sys.stderr)

    recs = ev.load_gsm8k(args.data, args.prompts, EVAL_START)
    prompts = ev.prompt_ids(tok, [r["question"] for r in recs])
    refs = [(tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos[0]])[:args.max_new_tokens] for r in recs]
    ref = ev.score(model, prompts, refs)
    ce_i = ev.per_sequence(ref, "nll")
    ce = ev.mean_of(ref, "nll")

    methods = [ev.baseline(f, v) for f, v in (QUICK if args.quick else FULL)]
    methods += [ev.epic(a) for a in sorted(set([alpha] + list(args.epic_alphas)))]
    h_ref = ev.mean_of(ref, "entropy")
    results = []
    for m in methods:
        t1 = time.perf_counter()
        gens, extra = ev.decode(model, prompts, m, args, eos, tok.pad_token_id or 0, horizon=args.horizon,
                                rollouts=args.rollouts)
        seconds = time.perf_counter() - t1
        sc = ev.score(model, prompts, gens)
        er_i = ev.per_sequence(sc, "entropy")
        er = ev.mean_of(sc, "entropy")
        pairs = [(a, b) for a, b in zip(er_i, ce_i) if a == a]
        results.append(dict(method=m.name, family=m.family, entropy_rate=er, nll=ev.mean_of(sc, "nll"),
                            calibration_error=abs(er - ce), signed_gap=er - ce, typicality_gap=abs(er - h_ref),
                            calibrated=m.alpha == alpha,
                            per_prompt_error=sum(abs(a - b) for a, b in pairs) / max(len(pairs), 1),
                            mean_length=sum(map(len, gens)) / len(gens), seconds=seconds,
                            entropy_rate_per_prompt=er_i, generations=[tok.decode(g) for g in gens], epic_stats=extra))
        print(f"  {m.name:18s} ER {er:.3f}  |ER-CE| {abs(er - ce):.3f}  ({seconds:.0f}s)", file=sys.stderr)
    return dict(experiment="calibration", alpha=alpha, calibration=cal, calibration_seconds=cal_s,
                reference=dict(cross_entropy=ce, entropy_rate=h_ref, cross_entropy_per_prompt=ce_i,
                               entropy_rate_per_prompt=ev.per_sequence(ref, "entropy")),
                results=results, settings=vars(args), machine=ev.machine(), eval_start=EVAL_START)


def label(r, alpha) -> str:
    return r["method"] + (" (alpha*)" if r.get("calibrated") else "")


def table(out) -> str:
    ref = out["reference"]
    rows = [["(the model on the human answers)", ref["entropy_rate"], ev.std_error(ref["entropy_rate_per_prompt"]),
             ref["cross_entropy"],
             abs(ref["entropy_rate"] - ref["cross_entropy"]), float("nan"), 0.0]]
    for r in sorted(out["results"], key=lambda r: r["calibration_error"]):
        rows.append([label(r, out["alpha"]), r["entropy_rate"], ev.std_error(r["entropy_rate_per_prompt"]), r["nll"],
                     r["calibration_error"], r["per_prompt_error"], r["typicality_gap"]])
    return ev.md_table(["method", "entropy rate ER = mean H(q) [nats/tok]", "ER std. error (over prompts)",
                        "mean -log q [nats/tok]",
                        "calibration error abs(ER - CE)", "per-prompt mean abs(ER_i - CE_i)",
                        "typicality gap abs(ER - H_ref)"], rows, 3)


def plot(out, path) -> None:
    plt = ev.plt()
    ref = out["reference"]
    ce_i = ref["cross_entropy_per_prompt"]
    groups = bins(ce_i, 4)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw=dict(width_ratios=[1, 1.25]))
    xs = [sum(ce_i[i] for i in g) / len(g) for g in groups]
    def curve(vals):
        return [sum(vals[i] for i in g) / len(g) for g in groups]
    left, right = max(0.0, min(xs) - 0.4), max(xs) + 0.4
    a.plot([left, right], [left, right], color="gray", ls="--", lw=1, label="ER = CE (calibrated)")
    a.set_xlim(left, right)
    a.plot(xs, curve(ref["entropy_rate_per_prompt"]), color="gray", marker="s", lw=1.5, ls=":",
           label="H_ref: model entropy on the human answers")
    for r in out["results"]:
        if r["method"] not in CURVE and r["family"] != "EPIC":
            continue
        epic, star = r["family"] == "EPIC", r.get("calibrated")
        a.plot(xs, curve(r["entropy_rate_per_prompt"]), marker="o", lw=2.5 if star else 1.2,
               color="black" if star else None, ls="-" if not epic or star else "-.", label=label(r, out["alpha"]))
    a.set_xlabel("reference cross-entropy CE of the prompt's human answer [nats/token]")
    a.set_ylabel("entropy rate ER of the generations [nats/token]")
    a.set_title(f"(a) ER vs CE: {len(ce_i)} prompts in {len(groups)} bins of CE", fontsize=9)
    lo_y, hi_y = a.get_ylim()
    a.set_ylim(lo_y, hi_y + 0.45 * (hi_y - lo_y))          # room for the legend above the curves
    a.legend(fontsize=7, ncol=2, loc="upper left")
    rs = sorted(out["results"], key=lambda r: r["calibration_error"])
    names = [label(r, out["alpha"]) for r in rs]
    ys = range(len(rs))
    b.barh([y - 0.2 for y in ys], [r["calibration_error"] for r in rs], height=0.4, color="tab:blue",
           label="calibration error |ER - CE|")
    b.barh([y + 0.2 for y in ys], [r["typicality_gap"] for r in rs], height=0.4, color="tab:orange",
           label="typicality gap |ER - H_ref|")
    vals = sorted(v for r in rs for v in (r["calibration_error"], r["typicality_gap"]))
    cap = min(vals[-1], 3 * vals[len(vals) // 2] + 0.05) * 1.15 if vals else 1.0
    b.set_xlim(0, cap)
    for y, r in zip(ys, rs):
        for dy, v in ((-0.2, r["calibration_error"]), (0.2, r["typicality_gap"])):
            if v > cap:      # clipped bar: its value inside the bar's end, in white
                b.text(cap * 0.99, y + dy, f"{v:.2f} >", va="center", ha="right", fontsize=6, color="white",
                       fontweight="bold")
            else:
                b.text(v + cap * 0.01, y + dy, f"{v:.2f}", va="center", fontsize=6)
    b.set_yticks(list(ys), names, fontsize=8)
    for t, r in zip(b.get_yticklabels(), rs):
        if r["family"] == "EPIC":
            t.set_fontweight("bold")
    b.invert_yaxis()
    b.set_xlabel("nats/token")
    b.legend(fontsize=8, loc="upper right")
    b.set_title(f"(b) CE = {ref['cross_entropy']:.2f}, H_ref = {ref['entropy_rate']:.2f} nats/token "
                f"({out['settings']['max_new_tokens']} tokens per prompt)", fontsize=9)
    fig.suptitle(f"SmolLM2-135M-Instruct on GSM8K: EPIC (alpha* = {out['alpha']:.3f}) vs truncation baselines",
                 fontsize=10)
    ev.save_figure(fig, path)


def main(argv=None, model=None, tok=None) -> int:
    return ev.experiment_main(argv, model, tok, parse=parse, run=run, table=table, plot=plot,
                              headline=lambda args, out: (f"\nalpha* = {out['alpha']:.4f}; reference cross-entropy "
                          f"{out['reference']['cross_entropy']:.3f} nats/token over {args.prompts} prompts x "
                          f"{args.max_new_tokens} tokens\n"))


if __name__ == "__main__":
    sys.exit(main())
