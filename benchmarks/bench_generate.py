"""Whole-decode throughput: ``epic_kernels.generate`` against HF ``generate(do_sample=True, top_p=0.9)``.

On the embedded model, 2 threads, the same GSM8K prompts for both (batch 1: the first question;
batch 8: the first eight, left-padded). Every run produces exactly ``--new-tokens`` tokens per
sequence (EPIC without an EOS id, HF with ``min_new_tokens``), timed end to end including the
prompt's prefill, so tokens/s = batch x new tokens / wall seconds. Each EPIC run is paired with an
HF run of the same batch right before it (A B A B ...); the reported ratio is the median over
repeats of ``HF seconds / EPIC seconds`` of the pairs.

EPIC configurations (alpha 0.2, rollouts 2, the library's block size; horizon 4 and 2):

* ``top-k 50``: ``top_k=50, rollout_top_k=50`` candidates and rollout policy;
* ``full vocab``: ``top_k=None, rollout_top_k=None``;
* ``defaults``: ``epic_kernels.generate`` called with none of these arguments (its own defaults,
  read from its signature and printed). When they coincide with a configuration above, that
  measurement is reported for both rather than run twice.

    python benchmarks/bench_generate.py
    python benchmarks/bench_generate.py --quick
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402

import epic_kernels  # noqa: E402

CONFIGS = {"topk50": ("top-k 50", dict(top_k=50, rollout_top_k=50)),
           "full": ("full vocab", dict(top_k=None, rollout_top_k=None))}
KEYS = ("alpha", "horizon", "rollouts", "top_k", "rollout_top_k", "top_p", "min_p", "block_size")


def generate_defaults() -> dict:
    sig = inspect.signature(epic_kernels.generate)
    return {k: sig.parameters[k].default for k in KEYS}


def case_kwargs(config: str, horizon: int) -> dict:
    """Arguments passed to ``generate`` (``defaults``: none)."""
    if config == "defaults":
        return {}
    return dict(alpha=0.2, horizon=horizon, rollouts=2, **CONFIGS[config][1])


def epic_run(model, ids, mask, n, kw, seed):
    out, secs = C.timed(lambda: epic_kernels.generate(
        model, ids, attention_mask=mask, max_new_tokens=n, seed=seed, eos_token_id=None, **kw))
    assert all(len(t) == n for t in out.new_tokens)
    return secs, out.summary()


def main(argv=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per sequence and run")
    p.add_argument("--repeats", type=int, default=2, help="interleaved (HF, EPIC) pairs per case")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--horizons", default="4,2")
    p.add_argument("--configs", default="topk50,full", help="comma list of: " + ",".join(CONFIGS))
    args = p.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats, args.batches, args.horizons = 3, 1, "1", "4"
    C.setup_torch(args.threads)
    torch.set_grad_enabled(False)
    model, tok, _ = C.load(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    seqs = C.chat_prompts(tok, args.data, max(batches))
    inputs = {b: C.left_pad(seqs[:b]) for b in batches}
    defaults = generate_defaults()
    effective = lambda c, h: tuple(sorted(dict(defaults, **case_kwargs(c, h)).items()))
    cases = [(h, c, b) for h in (int(x) for x in args.horizons.split(",")) for c in args.configs.split(",")
             for b in batches]
    same_as = {}                                  # defaults case -> the identical measured case
    for b in batches:
        twin = [(h, c, bb) for h, c, bb in cases if bb == b and effective(c, h) == effective("defaults", 0)]
        if twin:
            same_as[("defaults", b)] = twin[0]
        else:
            cases.append((defaults["horizon"], "defaults", b))
    n = args.new_tokens
    C.hf_topp(model, *inputs[batches[0]], 2)                                    # warm-up
    records = {case: dict(hf=[], epic=[], summary=None) for case in cases}
    for r in range(args.repeats):
        for case in C.progress_bar(cases, args.no_progress, desc=f"repeat {r + 1}/{args.repeats}"):
            h, c, b = case
            ids, mask = inputs[b]
            records[case]["hf"].append(C.hf_topp(model, ids, mask, n, args.seed + r))
            secs, summary = epic_run(model, ids, mask, n, case_kwargs(c, h), args.seed + r)
            records[case]["epic"].append(secs)
            records[case]["summary"] = summary
            print(f"[bench_generate] repeat {r + 1} horizon {h} {c} batch {b}: HF {records[case]['hf'][-1]:.1f}s "
                  f"EPIC {secs:.1f}s", file=sys.stderr, flush=True)
    for key, twin in same_as.items():
        records[(defaults["horizon"], "defaults", key[1])] = dict(records[twin], twin=twin)
    results, rows = [], []
    name = lambda c: "defaults" if c == "defaults" else CONFIGS[c][0]
    order = list(CONFIGS) + ["defaults"]
    for (h, c, b), rec in sorted(records.items(), key=lambda kv: (-kv[0][0], order.index(kv[0][1]), kv[0][2])):
        ratios = [t_hf / t_ep for t_hf, t_ep in zip(rec["hf"], rec["epic"])]
        hf_tps = b * n / C.median(rec["hf"])
        ep_tps = b * n / C.median(rec["epic"])
        s = rec["summary"]
        res = dict(horizon=h, config=name(c), batch=b, hf_tok_s=hf_tps, epic_tok_s=ep_tps,
                   ratio=C.median(ratios), ratios=ratios, calls_per_token=s["forward_calls_per_token"],
                   fwd_tokens_per_token=s["forward_tokens_per_token"], survivors=s["mean_survivors"],
                   hf_seconds=rec["hf"], epic_seconds=rec["epic"])
        results.append(res)
        target = {"top-k 50": "≥ 0.3x (aim 0.5x)", "full vocab": "≥ 0.05x", "defaults": "≥ 0.3x"}[res["config"]]
        label = res["config"]
        if "twin" in rec:
            label += f" (same run as {name(rec['twin'][1])})"
            res["same_run_as"] = name(rec["twin"][1])
        rows.append([h, label, b, hf_tps, ep_tps, res["ratio"], target, res["calls_per_token"],
                     res["fwd_tokens_per_token"], res["survivors"]])
    print(f"\n## bench_generate: alpha 0.2, rollouts 2, {n} new tokens per sequence, {args.repeats} "
          f"interleaved pairs per case, {args.threads} threads, git {C.git_revision()}, CPU only (no GPU)\n")
    print(f"epic_kernels.generate defaults: {defaults}\n")
    print(C.md_table(["horizon", "EPIC config", "batch", "HF top-p tok/s", "EPIC tok/s", "EPIC / HF (median of pairs)",
                      "target", "fwd calls/token", "fwd tokens/token", "survivors/step"], rows))
    C.write_json(args.json, dict(machine=C.machine(), args=vars(args), generate_defaults=defaults,
                                 results=results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
