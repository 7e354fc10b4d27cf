#!/usr/bin/env python
"""The evidence at lengths where it can show (paper Figure 4, Table 1), embedded SmolLM2-135M.

One generation pass per decoder and operating point, reused by every table and plot:

1. alpha* by ``calibrate_alpha`` (the library's calibration, as ``epic-calibrate``) on held-out
   GSM8K answers, lines [0, --cal-texts) of the test file, each scored as the model's reply to its
   question (chat template, EOS appended), calculator annotations ``<<...>>`` removed, at most
   --cal-tokens tokens; horizon and rollouts are the decoding ones.
2. Evaluation prompts: --prompts GSM8K questions from line 500 on (disjoint from step 1). Every
   operating point decodes one continuation of up to --max-new-tokens tokens per prompt (EPIC
   through ``epic_kernels.generate`` with the engine's defaults; the baselines through HF
   ``model.generate``, HF's implicit top-k 50 switched off except for top-k), and for the first
   --div-prompts prompts --div-samples - 1 more continuations of --div-tokens tokens (diversity).
3. Every continuation, and the prompt's human answer, is run through the model once (teacher forced):
   per token the entropy ``H(q(.|prefix))`` of the full next-token distribution and ``-log q(y_t)``.
   At each length L of --lengths: ER_L = the token-weighted mean H over the first L tokens of the
   generations (fewer where the generation ended with EOS), CE_L = the model's mean ``-log q`` over
   the first L tokens of the human answers (+ EOS; each answer's own length, capped at L), and
   ``|ER_L - CE_L|`` (Braverman et al.'s calibration error). 95 % intervals: percentile bootstrap
   over prompts, the same resampled prompts for every decoder and for CE (paired).
4. ER by position (windows of --window tokens): does it drift along a generation?
5. Diversity at matched entropy: within each of the --div-prompts prompts, Self-BLEU (sacrebleu) and
   distinct-n among its --div-samples continuations (the first --div-tokens tokens of the main one
   and the extra ones), against ER over the first --div-tokens tokens (all prompts), per operating point.
6. GSM8K accuracy: exact match of the final number of each main continuation with the answer's.

    python experiments/exp_evidence.py --json experiments/results/evidence.json --plot docs/img/evidence
    python experiments/exp_evidence.py --from-json experiments/results/evidence.json --plot docs/img/evidence

``--plot PREFIX`` writes PREFIX-calibration.png, -fig4.png, -drift.png and -diversity.png. The JSON
is rewritten after every operating point (``"complete": false`` until the end), and ``--resume
FILE`` reuses the operating points a previous run with the same settings finished.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

EVAL_START = 500
# the decoders of the calibration table (issue #14); eta 0.001: inside Hewitt et al.'s suggested 3e-4..2e-3
MAIN = [("temperature", 1.0), ("temperature", 0.7), ("top-p", 0.9), ("top-p", 0.95), ("top-k", 50), ("min-p", 0.1),
        ("min-p", 0.05), ("eta", 0.001), ("typical", 0.9), ("temperature", 1.3)]
# the other operating points of each decoder's knob (Figure 4's trajectories, the diversity plot); few,
# because HF sampling of 48 x 256 tokens takes ~4 min per point on the shared 2-core machine
MORE = [("temperature", 0.85), ("temperature", 1.15), ("top-p", 0.8), ("top-k", 10), ("min-p", 0.2),
        ("typical", 0.5), ("eta", 0.003)]
QUICK_MAIN = [("temperature", 1.0), ("top-p", 0.9), ("eta", 0.001)]
QUICK_MORE = [("temperature", 0.7)]
KNOB = {"temperature": "T", "top-p": "p", "top-k": "k", "min-p": "p_min", "typical": "tau", "eta": "eta",
        "EPIC": "alpha"}
DIV_SEED = 10_000       # seed offset of the extra diversity samples
RESULTS = ev.REPO_ROOT / "experiments" / "results" / "evidence.json"   # the committed run


def eval_prompts(tok, n: int, data=ev.DEFAULT_DATA) -> list[list[int]]:
    """The first ``n`` evaluation prompts (GSM8K questions from line ``EVAL_START``, chat template)."""
    return ev.prompt_ids(tok, [r["question"] for r in ev.load_gsm8k(data, n, EVAL_START)])


def parse(argv=None):
    p = ev.experiment_parser(__doc__, "smoke run: 3 prompts, 12 tokens, 5 operating points, tiny calibration",
                             "write all results (key 'alpha' = alpha*)")
    p.add_argument("--prompts", type=int, default=48, help="evaluation prompts (GSM8K lines 500 on)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--lengths", type=int, nargs="+", default=[96, 192, 256], help="lengths L of the tables")
    p.add_argument("--window", type=int, default=32, help="tokens per position window (drift)")
    p.add_argument("--div-prompts", type=int, default=12, help="prompts of the diversity measurements")
    p.add_argument("--div-samples", type=int, default=4, help="continuations per diversity prompt")
    p.add_argument("--div-tokens", type=int, default=64, help="tokens per diversity continuation")
    p.add_argument("--cal-texts", type=int, default=40, help="held-out answers for calibration (lines 0 on)")
    p.add_argument("--cal-tokens", type=int, default=500, help="held-out answer tokens for calibration")
    p.add_argument("--samples", type=int, default=8, help="importance samples per prefix (calibration)")
    p.add_argument("--horizon", type=int, default=ev.defaults.HORIZON)
    p.add_argument("--rollouts", type=int, default=ev.defaults.ROLLOUTS)
    p.add_argument("--alpha", type=float, default=None, help="skip calibration and use this alpha")
    p.add_argument("--calibration", default=None, metavar="FILE.json", help="skip calibration: alpha from here")
    p.add_argument("--epic-alphas", type=float, nargs="*", default=[0.0, 0.5],
                   help="EPIC operating points besides alpha*, decoded in this order after it (cost grows "
                        "with |alpha|, and faster for alpha > 0: 4 tokens/s at -0.25, 15 at 0.25, 89 at 0 here)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the prompts")
    p.add_argument("--resume", default=None, metavar="FILE", help="reuse finished operating points of this JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.lengths, args.window = 3, 12, [6, 12], 4
        args.div_prompts, args.div_samples, args.div_tokens = 2, 2, 6
        args.cal_texts, args.cal_tokens, args.samples, args.horizon = 2, 12, 4, 2
        args.epic_alphas, args.bootstrap = [0.5], 200
    if max(args.lengths) > args.max_new_tokens or args.div_tokens > args.max_new_tokens:
        p.error("--lengths and --div-tokens must not exceed --max-new-tokens")
    if args.div_prompts > args.prompts or args.div_samples < 2:
        p.error("--div-prompts must not exceed --prompts, and --div-samples must be at least 2")
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
                          samples=args.samples, top_k=ev.defaults.TOP_K, rollout_top_k=ev.defaults.ROLLOUT_TOP_K,
                          max_tokens=args.cal_tokens, seed=args.seed, progress=not args.no_progress)
    return res.alpha, dict(source="calibrate_alpha", **res.to_dict())


def _r(xs):
    return [round(float(x), 4) for x in xs]


def measure(model, tok, method, prompts, div_prompts, args, eos, pad, gold) -> dict:
    """Decode, score and measure one operating point (the record stored in the JSON)."""
    t0 = time.perf_counter()
    main_args = argparse.Namespace(**dict(vars(args), max_new_tokens=args.max_new_tokens, seed=args.seed))
    if method.hf is not None:        # measured while decoding: no teacher-forced second pass
        gens, scored = ev.hf_generate(model, prompts, method, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                      eos=eos, batch_size=args.batch_size, pad_id=pad, measure=True)
        stats = None
    else:
        gens, stats = ev.decode(model, prompts, method, main_args, eos, pad, horizon=args.horizon,
                                rollouts=args.rollouts)
    div_args = argparse.Namespace(**dict(vars(args), max_new_tokens=args.div_tokens, seed=args.seed + DIV_SEED))
    extra, extra_stats = ev.decode(model, div_prompts, method, div_args, eos, pad, horizon=args.horizon,
                                   rollouts=args.rollouts)
    decode_s = time.perf_counter() - t0
    if method.hf is None:
        scored = ev.score(model, prompts, gens)
    score_s = time.perf_counter() - t0 - decode_s
    texts = [tok.decode(g, skip_special_tokens=True) for g in gens]
    k = args.div_samples - 1
    groups = [[tok.decode(gens[j][:args.div_tokens], skip_special_tokens=True)]
              + [tok.decode(g, skip_special_tokens=True) for g in extra[j * k:(j + 1) * k]]
              for j in range(args.div_prompts)]
    answers = [ev.final_number(t) for t in texts]
    eos_set = set(eos)
    return dict(method=method.name, family=method.family,
                knob=method.alpha if method.family == "EPIC" else _knob(method), main=False,
                entropy=[_r(s.entropy) for s in scored], nll=[_r(s.nll) for s in scored],
                lengths=[len(g) for g in gens], finished=[bool(g) and g[-1] in eos_set for g in gens],
                texts=texts, answers=answers, correct=[a is not None and a == g for a, g in zip(answers, gold)],
                diversity_texts=groups, self_bleu=[ev.self_bleu(g) for g in groups],
                distinct=[[ev.distinct_n(g, n) for n in (1, 2, 3)] for g in groups],
                decode_seconds=decode_s, score_seconds=score_s, epic_stats=stats, epic_stats_diversity=extra_stats,
                loadavg=ev.loadavg())


def _knob(method) -> float:
    """The knob value of a baseline (the number in its name: ``baseline`` names it ``"top-p 0.9"``)."""
    return float(method.name.split()[-1])


def run(args, model=None, tok=None) -> dict:
    model, tok, eos = ev.prepare(args, model, tok)
    pad = tok.pad_token_id or 0
    t_start = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "from_json", "resume", "no_progress")}
    settings["data"] = ev.repo_relative(settings["data"])   # the same in every checkout
    done, prior_s, resumed = {}, 0.0, None
    if args.resume and Path(args.resume).is_file():
        old = ev.read_json(args.resume)
        same = {k: v for k, v in old["settings"].items() if k not in ("threads",)} == \
            {k: v for k, v in settings.items() if k not in ("threads",)}
        if not same:
            raise SystemExit(f"--resume {args.resume}: its settings differ from this run's")
        done = {r["method"]: r for r in old["results"]}
        alpha, cal, cal_s = old["alpha"], old["calibration"], old["calibration_seconds"]
        prior_s = old.get("wall_seconds", 0.0)       # the wall time of the run(s) it continues
        resumed = dict(file=str(args.resume), points=len(done), wall_seconds=prior_s, machine=old.get("machine"),
                       resumed_from=old.get("resumed_from"))
        print(f"resuming: {len(done)} operating points from {args.resume}", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        alpha, cal = calibrate(args, model, tok, eos)
        cal_s = time.perf_counter() - t0
    print(f"alpha* = {alpha:.4f} ({cal['source']}, {cal_s:.0f}s)", file=sys.stderr)

    recs = ev.load_gsm8k(args.data, args.prompts, EVAL_START)
    prompts = ev.prompt_ids(tok, [r["question"] for r in recs])
    div_prompts = [p for p in prompts[:args.div_prompts] for _ in range(args.div_samples - 1)]
    gold = [ev.final_number(r["answer"]) for r in recs]
    refs = [(tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos[0]])[:args.max_new_tokens] for r in recs]
    ref = ev.score(model, prompts, refs)
    reference = dict(entropy=[_r(s.entropy) for s in ref], nll=[_r(s.nll) for s in ref],
                     lengths=[len(r) for r in refs], answers=gold)

    main = [ev.baseline(f, v) for f, v in (QUICK_MAIN if args.quick else MAIN)]
    more = [ev.baseline(f, v) for f, v in (QUICK_MORE if args.quick else MORE)]
    star = ev.epic(alpha)
    others = [ev.epic(a) for a in args.epic_alphas if ev.epic(a).name != star.name]
    # the calibration table's decoders first, then the knobs: a run cut short still has the main table
    # (alpha* early, after three baselines: EPIC is the point of the comparison and the slowest decode)
    order = main[:3] + [star] + others[:1] + main[3:] + more + others[1:]
    results = []
    out = dict(experiment="evidence", complete=False, alpha=alpha, calibration=cal, calibration_seconds=cal_s,
               reference=reference, results=results, settings=settings, eval_start=EVAL_START, resumed_from=resumed)
    bar = ev.progress_bar(order, disable=args.no_progress, desc="operating points")
    for m in bar:
        bar.set_postfix_str(m.name)
        if m.name in done:
            rec = done[m.name]
        else:
            rec = measure(model, tok, m, prompts, div_prompts, args, eos, pad, gold)
        rec["main"] = m in main or m == star
        rec["calibrated"] = m == star
        results.append(rec)
        er = ev.mean_of([ev.Scored(e, n) for e, n in zip(rec["entropy"], rec["nll"])], "entropy")
        print(f"  {m.name:18s} ER {er:.3f}  Self-BLEU {ev.median(rec['self_bleu']):.1f}  "
              f"acc {sum(rec['correct'])}/{len(rec['correct'])}  ({rec['decode_seconds']:.0f}s decode)",
              file=sys.stderr)
        out.update(machine=ev.machine(), wall_seconds=prior_s + time.perf_counter() - t_start)
        if args.json:
            ev.write_json(args.json, out, indent=None)         # per-token arrays: one line, a third of the size
    out.update(complete=True, machine=ev.machine(), wall_seconds=prior_s + time.perf_counter() - t_start)
    return out


# ------------------------------------------------------------------------------------------------ #
# statistics (from the JSON)
# ------------------------------------------------------------------------------------------------ #
def sums(per_token, lo, hi):
    """Per-prompt ``(sum, count)`` of the tokens at positions [lo, hi)."""
    return [sum(x[lo:hi]) for x in per_token], [len(x[lo:hi]) for x in per_token]


class Stats:
    """Bootstrap statistics of one JSON: every decoder's draws use the same resampled prompts."""

    def __init__(self, out):
        self.out = out
        self.ref = out["reference"]
        self.n = len(self.ref["nll"])
        self.idx = ev.bootstrap_indices(self.n, out["settings"]["bootstrap"], seed=0)

    def er(self, rec, L, lo=0, attr="entropy"):
        """(point, draws) of the token-weighted mean ``attr`` over positions [lo, L)."""
        import numpy as np

        num, den = sums(rec[attr], lo, L)
        point = sum(num) / sum(den) if sum(den) else float("nan")
        return point, ev.ratio_draws(num, den, self.idx) if sum(den) else np.full(len(self.idx), np.nan)

    def ce(self, L):
        return self.er(self.ref, L, attr="nll")

    def gap(self, rec, L):
        """(point, draws) of ER_L - CE_L, paired."""
        e, ed = self.er(rec, L)
        c, cd = self.ce(L)
        return e - c, ed - cd

    def mean(self, values):
        import numpy as np

        v = np.asarray(values, dtype=float)
        idx = ev.bootstrap_indices(len(v), len(self.idx), seed=1)      # the diversity prompts
        return float(np.nanmean(v)), ev.mean_draws(v, idx)


def ci(point, draws, digits=2) -> str:
    lo, hi = ev.interval(draws)
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def outside(draws) -> bool:
    lo, hi = ev.interval(draws)
    return lo > 0 or hi < 0


def main_results(out):
    """The calibration tables' decoders: the main baselines and every EPIC point (issue #14's list has
    EPIC at alpha* and at the other alphas; the JSON marks only the baselines and alpha* as main)."""
    return [r for r in out["results"] if r.get("main") or r["family"] == "EPIC"]


def star_of(out):
    return next((r for r in out["results"] if r.get("calibrated")), None)


def label(r) -> str:
    return r["method"] + (" (alpha*)" if r.get("calibrated") else "")


def calibration_table(out, st, L) -> str:
    star = star_of(out)
    c, cd = st.ce(L)
    h, hd = st.er(st.ref, L)
    # the human answers' row: their H_ref (the model's entropy along them) in the ER column, CE in the -log q one
    rows = [["human answers (ER column: H_ref; -log q column: CE)", ci(h, hd), ci(c, cd), ci(h - c, hd - cd),
             ci(abs(h - c), abs(hd - cd)), ""]]
    gaps = {}
    for r in main_results(out):
        g, gd = st.gap(r, L)
        gaps[r["method"]] = (g, gd)
    sg = gaps.get(star["method"]) if star else None
    for r in sorted(main_results(out), key=lambda r: abs(gaps[r["method"]][0])):
        g, gd = gaps[r["method"]]
        e, ed = st.er(r, L)
        if sg is None or r is star:
            diff = ""
        else:
            dd = abs(gd) - abs(sg[1])
            diff = ci(abs(g) - abs(sg[0]), dd) + (" **outside**" if outside(dd) else "")
        rows.append([label(r), ci(e, ed), ci(*st.er(r, L, attr="nll")), ci(g, gd), ci(abs(g), abs(gd)), diff])
    return ev.md_table([f"decoder (L = {L})", "ER_L [95% CI]", "mean -log q of its tokens",
                        "ER_L - CE_L", "abs(ER_L - CE_L)",
                        "abs gap minus EPIC alpha*'s (> 0: EPIC closer to CE)"], rows)


def trajectory_table(out, st) -> str:
    L = max(out["settings"]["lengths"])
    rows = []
    for r in sorted(out["results"], key=lambda r: (r["family"], float(r["knob"]))):
        e, ed = st.er(r, L)
        g, gd = st.gap(r, L)
        rows.append([r["family"], fmt_knob(r), ci(e, ed), ci(*st.er(r, L, attr="nll")), ci(g, gd),
                     f"{sum(r['lengths']) / len(r['lengths']):.0f}", f"{sum(r['finished'])}/{len(r['finished'])}"])
    return ev.md_table(["decoder", "knob", f"ER_{L} [95% CI]", f"mean -log q (first {L})", f"ER - CE at {L}",
                        "mean length", "ended with EOS"], rows)


def fmt_knob(r) -> str:
    return f"{KNOB[r['family']]} = {float(r['knob']):.4g}"


def windows(out):
    W, T = out["settings"]["window"], out["settings"]["max_new_tokens"]
    return [(lo, min(lo + W, T)) for lo in range(0, T, W)]


def drift_table(out, st) -> str:
    ws = windows(out)
    T = out["settings"]["max_new_tokens"]
    half = T // 2
    rows = []
    for name, rec, attr in [("human answers: H along them", st.ref, "entropy"),
                            ("human answers: -log q (CE)", st.ref, "nll")] + [(label(r), r, "entropy")
                                                                              for r in main_results(out)]:
        cells = []
        for lo, hi in ws:
            num, den = sums(rec[attr], lo, hi)
            cells.append(sum(num) / sum(den) if sum(den) else float("nan"))
        a, ad = st.er(rec, half, 0, attr)
        b, bd = st.er(rec, T, half, attr)
        d = ci(b - a, bd - ad) + (" **outside**" if outside(bd - ad) else "") if b == b else "n/a"
        n2 = sum(1 for x in rec[attr] if len(x) > half)
        rows.append([name, *cells, d, n2])
    return ev.md_table(["tokens", *[f"{lo}-{hi}" for lo, hi in ws], f"mean({half}-{T}) - mean(0-{half})",
                        f"prompts past {half}"], rows)


def diversity_table(out, st) -> str:
    D = out["settings"]["div_tokens"]
    star = star_of(out)
    sb_star = st.mean(star["self_bleu"]) if star else None
    rows = []
    for r in sorted(out["results"], key=lambda r: st.er(r, D)[0]):
        e, ed = st.er(r, D)
        d2 = [x[1] for x in r["distinct"]]
        sb, sbd = st.mean(r["self_bleu"])
        if sb_star is None or r is star:
            diff = ""
        else:          # paired: the same resampled diversity prompts
            dd = sbd - sb_star[1]
            diff = ci(sb - sb_star[0], dd, digits=1) + (" **outside**" if outside(dd) else "")
        rows.append([label(r), ci(e, ed), ci(sb, sbd, digits=1), diff, ci(*st.mean(d2), digits=3),
                     f"{ev.fmt(sum(x[0] for x in r['distinct']) / len(r['distinct']), 3)}",
                     f"{ev.fmt(sum(x[2] for x in r['distinct']) / len(r['distinct']), 3)}"])
    return ev.md_table([f"operating point (sorted by ER_{D})", f"ER_{D} (all prompts)",
                        "Self-BLEU (lower = more diverse)", "Self-BLEU minus EPIC alpha*'s (> 0: EPIC more diverse)",
                        "distinct-2", "distinct-1", "distinct-3"], rows)


def accuracy_table(out, st) -> str:
    rows = []
    for r in sorted(out["results"], key=lambda r: -sum(r["correct"])):
        c = [float(x) for x in r["correct"]]
        rows.append([label(r), f"{sum(r['correct'])}/{len(r['correct'])}",
                     ci(sum(c) / len(c), ev.mean_draws(c, st.idx)),
                     f"{sum(r['finished'])}/{len(r['finished'])}",
                     f"{sum(x is None for x in r['answers'])}"])
    return ev.md_table(["operating point", "correct", "accuracy [95% CI]", "ended with EOS", "no number"], rows)


def cost_table(out) -> str:
    rows = []
    for r in out["results"]:
        s = r.get("epic_stats") or {}
        rows.append([label(r), f"{r['decode_seconds']:.0f}", f"{r['score_seconds']:.0f}",
                     ev.fmt(s.get("tokens_per_second", float("nan"))), ev.fmt(s.get("mean_survivors", float("nan"))),
                     _load(r.get("loadavg"))])
    return ev.md_table(["operating point", "decode s (main + diversity)", "scoring s", "EPIC tokens/s (main)",
                        "EPIC survivors/step", "load average after"], rows)


def table(out) -> str:
    st = Stats(out)
    s = out["settings"]
    parts = []
    for L in s["lengths"]:
        parts += [f"\n### Calibration at L = {L}\n", calibration_table(out, st, L)]
    parts += ["\n### Figure 4: every operating point\n", trajectory_table(out, st),
              f"\n### Entropy rate by position ({s['window']}-token windows)\n", drift_table(out, st),
              f"\n### Diversity ({s['div_prompts']} prompts x {s['div_samples']} continuations x "
              f"{s['div_tokens']} tokens)\n", diversity_table(out, st),
              "\n### GSM8K accuracy (final number, exact match)\n", accuracy_table(out, st),
              "\n### Cost\n", cost_table(out)]
    return "\n".join(parts)


def _load(avg) -> str:
    """A load-average triple as stored (tuple when fresh, list from JSON) -> "1.2 / 1.5 / 1.7"."""
    return " / ".join(f"{x:.2f}" for x in avg) if avg else "n/a"


def headline(args, out) -> str:
    m = out.get("machine", {})
    return (f"\nalpha* = {out['alpha']:.4f} ({out['calibration']['source']}, {out['calibration_seconds']:.0f}s); "
            f"{args.prompts} prompts x {args.max_new_tokens} tokens; {len(out['results'])} operating points; "
            f"wall {out.get('wall_seconds', 0) / 60:.1f} min; load average {_load(m.get('loadavg_start'))} -> "
            f"{_load(m.get('loadavg_end'))}"
            f"{'' if out.get('complete') else '; INCOMPLETE RUN'}")


# ------------------------------------------------------------------------------------------------ #
# plots
# ------------------------------------------------------------------------------------------------ #
COLORS = {"temperature": "tab:red", "top-p": "tab:blue", "top-k": "tab:green", "min-p": "tab:purple",
          "typical": "tab:orange", "eta": "tab:brown", "EPIC": "black"}


def _err(point, draws):
    lo, hi = ev.interval(draws)
    return [[max(point - lo, 0)], [max(hi - point, 0)]]


def plot(out, prefix) -> None:
    prefix = str(prefix)
    if prefix.endswith(".png"):
        prefix = prefix[:-4]
    plt = ev.plt()
    st = Stats(out)
    s = out["settings"]
    lengths = s["lengths"]

    # (1) calibration: ER - CE per main decoder, at each length
    rs = main_results(out)
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.3 * len(lengths), 0.35 * len(rs) + 1.8), sharey=True)
    axes = list(axes) if len(lengths) > 1 else [axes]
    order = sorted(rs, key=lambda r: st.gap(r, lengths[-1])[0])
    for ax, L in zip(axes, lengths):
        for y, r in enumerate(order):
            g, gd = st.gap(r, L)
            ax.errorbar(g, y, xerr=_err(g, gd), fmt="o", color=COLORS[r["family"]], capsize=3,
                        ms=7 if r.get("calibrated") else 5)
        ax.axvline(0, color="gray", ls="--", lw=1)
        c, _ = st.ce(L)
        ax.set_title(f"L = {L}: CE = {c:.2f} nats/token", fontsize=9)
        ax.set_xlabel("ER_L - CE_L [nats/token], 95% CI")
    axes[0].set_yticks(range(len(order)), [label(r) for r in order], fontsize=8)
    fig.suptitle(f"Entropy-rate calibration, SmolLM2-135M-Instruct, {st.n} GSM8K prompts (0 = calibrated)",
                 fontsize=10)
    ev.save_figure(fig, prefix + "-calibration.png")
    plt.close(fig)

    # (2) Figure 4: every operating point, ER against its own -log q, the reference CE as a band
    fams = sorted({r["family"] for r in out["results"]}, key=lambda f: (f == "EPIC", f))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, L in zip(axes, (lengths[0], lengths[-1])):
        c, cd = st.ce(L)
        lo, hi = ev.interval(cd)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(c, color="gray", lw=1, label=f"CE of the human answers ({c:.2f}, 95% CI shaded)")
        h, _ = st.er(st.ref, L)
        ax.axhline(h, color="gray", lw=1, ls=":", label=f"H_ref along the human answers ({h:.2f})")
        for f in fams:
            pts = sorted((r for r in out["results"] if r["family"] == f), key=lambda r: float(r["knob"]))
            xs = [st.er(r, L, attr="nll")[0] for r in pts]
            ys = [st.er(r, L) for r in pts]
            ax.plot(xs, [y[0] for y in ys], color=COLORS[f], lw=2.2 if f == "EPIC" else 1.2, marker="o", ms=4,
                    label=f"{f} ({KNOB[f]})")
            for x, (y, yd), r in zip(xs, ys, pts):
                ax.errorbar(x, y, yerr=_err(y, yd), color=COLORS[f], capsize=2, lw=0.8)
                ax.annotate(f"{float(r['knob']):.3g}" + ("*" if r.get("calibrated") else ""), (x, y), fontsize=6,
                            xytext=(3, 3), textcoords="offset points", color=COLORS[f])
        ax.plot([0, 8], [0, 8], color="0.6", lw=0.6, ls="--", label="ER = -log q (what T = 1 sampling satisfies)")
        # the axes stop short of the high-temperature points (ER > 3): they would squeeze the rest into a corner
        near = [r for r in out["results"] if st.er(r, L)[0] <= 3] or out["results"]
        ax.set_xlim(0, max(st.er(r, L, attr="nll")[0] for r in near) * 1.1)
        ax.set_ylim(0.5 * min([st.er(r, L)[0] for r in near] + [h]), max([st.er(r, L)[0] for r in near] + [c]) * 1.1)
        ax.set_xlabel(f"mean -log q of the decoder's own tokens (first {L}) [nats/token]")
        ax.set_ylabel(f"entropy rate ER_{L} [nats/token]")
        off = len(out["results"]) - len(near)
        ax.set_title(f"L = {L}: a knob's curve crossing the CE line is ER = CE"
                     + (f"; {off} with ER > 3 off the scale" if off else ""), fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Figure 4: entropy rate of each decoder's operating points against the reference cross-entropy "
                 f"({st.n} prompts, 95% CI over prompts; * = alpha*)", fontsize=10)
    ev.save_figure(fig, prefix + "-fig4.png")
    plt.close(fig)

    # (3) drift: ER by position window
    ws = windows(out)
    fig, ax = plt.subplots(figsize=(9, 5))
    mids = [(lo + hi) / 2 for lo, hi in ws]

    def curve(rec, attr):
        ys = []
        for lo, hi in ws:
            num, den = sums(rec[attr], lo, hi)
            ys.append(sum(num) / sum(den) if sum(den) >= 5 * (hi - lo) else float("nan"))   # >= 5 prompts' worth
        return ys
    ax.plot(mids, curve(st.ref, "nll"), color="gray", lw=2, marker="s", label="human answers: -log q (CE)")
    ax.plot(mids, curve(st.ref, "entropy"), color="gray", lw=2, ls=":", marker="s", label="human answers: H_ref")
    seen = {}
    for r in main_results(out):
        if r["family"] == "temperature" and float(r["knob"]) > 1.0:
            continue                                        # off the scale; in the table
        k = seen[r["family"]] = seen.get(r["family"], -1) + 1        # the family's colour, a style per knob
        ax.plot(mids, curve(r, "entropy"), color=COLORS[r["family"]], marker="os^v"[k % 4], ms=4,
                ls=["-", "--", "-.", ":"][k % 4], lw=2.5 if r.get("calibrated") else 1.2, label=label(r))
    ax.set_xlabel(f"position in the continuation (centre of a {s['window']}-token window)")
    ax.set_ylabel("mean H(q) in the window [nats/token]")
    ax.set_title("Entropy rate along the generations (windows with fewer than 5 prompts' tokens left out)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ev.save_figure(fig, prefix + "-drift.png")
    plt.close(fig)

    # (4) diversity at matched entropy
    D = s["div_tokens"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, what in zip(axes, ("Self-BLEU", "distinct-2")):
        for f in fams:
            pts = sorted((r for r in out["results"] if r["family"] == f), key=lambda r: st.er(r, D)[0])
            xs = [st.er(r, D) for r in pts]
            ys = [st.mean(r["self_bleu"] if what == "Self-BLEU" else [x[1] for x in r["distinct"]]) for r in pts]
            ax.plot([x[0] for x in xs], [y[0] for y in ys], color=COLORS[f], lw=2.2 if f == "EPIC" else 1,
                    marker="o", ms=4, label=f)
            for (x, xd), (y, yd), r in zip(xs, ys, pts):
                ax.errorbar(x, y, xerr=_err(x, xd), yerr=_err(y, yd), color=COLORS[f], capsize=2, lw=0.7)
                ax.annotate(f"{float(r['knob']):.3g}" + ("*" if r.get("calibrated") else ""), (x, y), fontsize=6,
                            xytext=(3, 3), textcoords="offset points", color=COLORS[f])
        ax.set_xlabel(f"entropy rate ER_{D} [nats/token] ({st.n} prompts)")
        ax.set_ylabel(what + (" (lower = more diverse)" if what == "Self-BLEU" else " (higher = more diverse)"))
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([t for t in (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8)
                       if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Diversity at matched entropy: {s['div_prompts']} prompts x {s['div_samples']} continuations x "
                 f"{D} tokens per operating point (95% CI over prompts; * = alpha*)", fontsize=10)
    ev.save_figure(fig, prefix + "-diversity.png")
    plt.close(fig)


def main(argv=None, model=None, tok=None) -> int:
    return ev.experiment_main(argv, model, tok, parse=parse, run=run, table=table, plot=plot, headline=headline,
                              json_indent=None)


if __name__ == "__main__":
    sys.exit(main())
