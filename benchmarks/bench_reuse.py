"""What cross-step rollout reuse (``epic_kernels/engine/reuse.py``) saves, with and without prefetch.

On the embedded model, the prompts of ``bench_generate.py`` (writing and GSM8K, chat template),
library defaults (alpha 0.2, horizon 4, 2 rollouts, top-50) and, with ``--full``, the full
vocabulary. For each of prefetch off/on, a decode with reuse off and one with reuse on, over the
same prompts and seeds, interleaved (off, on) per repetition. Per emitted token: model calls (the
step's own and the finish calls for winners without an evaluation), rows fed, candidates reused
and the share of the rows that came for free from the previous winner's rollouts:
``reused_rows / (rows fed + reused_rows)`` (rows fed include prefetch rows for the next step). Counts are deterministic (the
same on any machine); wall-time ratios (reuse on / off, median of the repetitions, every value
shown) are from this run only. The tokens with reuse on and off are checked equal.

A script, not a suite: it is a 128-token decode protocol over 8 prompts whose figures are counts
(20-40 min on this 2-core machine), beyond `make bench`'s 15 minutes; like ``bench_generate.py``.

    python benchmarks/bench_reuse.py --json benchmarks/results/bench_reuse.json
    python benchmarks/bench_reuse.py --quick
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import epic_kernels  # noqa: E402
from bench_generate import prompt_set  # noqa: E402
from bench_tables import t_reuse  # noqa: E402


def counts(out) -> dict:
    n = max(sum(len(t) for t in out.new_tokens), 1)
    own = sum(s.forward_tokens for s in out.steps)
    reused_rows = sum(s.reused_rows for s in out.steps)
    calls = sum(s.forward_calls + s.finish_calls for s in out.steps)
    return dict(tokens=n, calls_per_token=calls / n, rows_per_token=own / n,
                reused_per_token=sum(s.reused for s in out.steps) / n,
                reused_rows_per_token=reused_rows / n, adopted_per_token=sum(s.prefetched for s in out.steps) / n,
                free_share=reused_rows / max(own + reused_rows, 1), seconds=sum(s.seconds for s in out.steps))


def run(model, batches, kw, tokens: int, reps: int, quiet: bool) -> list[dict]:
    rows = []
    for name, ids, mask, seeds in batches:
        for prefetch in (False, True):
            pairs, res = [], {}
            for _ in range(reps):
                got = {}
                for reuse in (False, True):
                    start = time.perf_counter()
                    out = epic_kernels.generate(model, ids, attention_mask=mask, max_new_tokens=tokens, seed=seeds,
                                                prefetch=prefetch, reuse=reuse, **kw)
                    got[reuse] = (out, time.perf_counter() - start)
                if got[True][0].new_tokens != got[False][0].new_tokens:
                    raise SystemExit(f"{name}: reuse changed the tokens (prefetch={prefetch})")
                pairs.append(got[True][1] / got[False][1])
                res = {r: counts(o) for r, (o, _) in got.items()}
            rows.append(dict(batch=name, prefetch=prefetch, off=res[False], on=res[True],
                             time_ratio=C.median(pairs), pairs=pairs))
            if not quiet:   # --no-progress
                print(f"  {name} prefetch={prefetch}: calls/token {res[False]['calls_per_token']:.3f} -> "
                      f"{res[True]['calls_per_token']:.3f}, rows/token {res[False]['rows_per_token']:.2f} -> "
                      f"{res[True]['rows_per_token']:.2f}, free share {res[True]['free_share']:.1%}, "
                      f"time on/off {[round(p, 3) for p in pairs]}", flush=True)
    return rows


def main(argv=None) -> int:
    p = C.base_parser(__doc__, "two prompts, 8 tokens")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--full", action="store_true", help="also the full vocabulary (batch 1, 2 prompts, 32 tokens)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    model, tok, _ = C.load(args.model)
    prompts = [ids[0].tolist() for _, ids in prompt_set(tok, args.data, 2 if args.quick else 8)]
    tokens = 8 if args.quick else args.tokens
    from epic_kernels.testing import left_padded

    ids, mask = left_padded(prompts)
    cases = [("defaults", {}, [(f"batch {len(prompts)}", ids, mask, list(range(len(prompts)))),
                               *[(f"batch 1, prompt {i}", *left_padded([pr]), [i]) for i, pr in
                                 enumerate(prompts[:2])]], tokens)]
    if args.full and not args.quick:
        cases.append(("full vocabulary", dict(top_k=None, rollout_top_k=None),
                      [(f"batch 1, prompt {i}", *left_padded([pr]), [i]) for i, pr in enumerate(prompts[:2])], 32))
    out = dict(command="python benchmarks/bench_reuse.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               machine=C.machine(), load_before=C.loadavg(), cases={})
    for label, kw, batches, n in cases:
        print(f"{label}: {n} new tokens", flush=True)
        out["cases"][label] = dict(tokens=n, rows=run(model, batches, kw, n, args.reps, args.no_progress))
    out["load_after"] = C.loadavg()
    print("\n" + t_reuse(out, Path(args.json or "-")))
    if args.json:
        C.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
