"""Peak memory of one EPIC step on the embedded model (SmolLM2-135M), with and without the
``max_rows`` cap (docs/engine.md, "Bounded memory").

Each case runs in its own subprocess under an address-space cap (``resource.setrlimit(RLIMIT_AS)``,
so a step that would take the machine down fails with an allocation error instead) and reports the
growth of peak RSS during the step, the survivors, calls and rows.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_memory.py [--as-gb 14] [--cases flat,long]

flat: full vocabulary (top_k=None, rollout_top_k=None), alpha 0.5, horizon 4, 2 rollouts, a
      256-token context of random tokens (nearly every token survives the first prune);
long: top-50 defaults, a 2,048-token prefix of random tokens, 16 rollouts.

A script, not a suite: it measures peak resident memory of a fresh process under an address-space
cap (one subprocess per case, minutes each), which pytest-benchmark's repeated in-process timing
cannot measure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "flat": dict(ctx=256, kw=dict(alpha=0.5, horizon=4, rollouts=2, top_k=None, rollout_top_k=None)),
    "long": dict(ctx=2048, kw=dict(alpha=0.2, horizon=4, rollouts=16, top_k=50, rollout_top_k=50)),
}


def child(case: str, max_rows, as_gb: float) -> None:
    import resource
    import time

    resource.setrlimit(resource.RLIMIT_AS, (int(as_gb * 2**30), int(as_gb * 2**30)))
    import torch
    import epic_kernels
    from epic_kernels.models import load_model

    torch.set_num_threads(2)
    model, _ = load_model()
    c = CASES[case]
    ids = torch.randint(0, 49152, (1, c["ctx"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, past_key_values=epic_kernels.EpicCache())
    logits, kv = out.logits[:, -1].clone(), out.past_key_values
    del out
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    try:
        extra = {} if max_rows == "omit" else dict(max_rows=max_rows)   # omit: a checkout without the cap
        step = epic_kernels.sample_step(logits, kv, model, seed=0, **extra, **c["kw"])
        st = step.stats
        res = dict(ok=True, token=int(step.tokens[0]), survivors=int(st.survivors.sum()), calls=st.forward_calls +
                   st.finish_calls, rows=st.forward_tokens + st.finish_tokens,
                   max_call_rows=getattr(st, "max_call_rows", "-"), restored=getattr(st, "restored", "-"))
    except (RuntimeError, MemoryError) as e:
        res = dict(ok=False, error=str(e).splitlines()[0][:120])
    res["seconds"] = round(time.perf_counter() - t, 1)
    res["peak_rss_growth_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before, 3)
    res["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--as-gb", type=float, default=14.0, help="address-space cap of each case (GiB)")
    ap.add_argument("--cases", default="flat,long")
    ap.add_argument("--max-rows", default="none,default",
                    help="comma list: none (no cap), default, an int, or omit (run a checkout without max_rows)")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        mr = a.child[1]
        if mr == "default":
            from epic_kernels import defaults
            mr = defaults.MAX_ROWS
        child(a.child[0], None if mr == "none" else mr if mr == "omit" else int(mr), a.as_gb)
        return
    print(f"{'case':6s} {'max_rows':>8s} {'ok':>3s} {'survivors':>9s} {'calls':>6s} {'rows':>7s} {'max/call':>8s} "
          f"{'peak RSS growth':>15s} {'s':>6s}")
    for case in a.cases.split(","):
        for mr in a.max_rows.split(","):
            p = subprocess.run([sys.executable, __file__, "--as-gb", str(a.as_gb), "--child", case, mr],
                               capture_output=True, text=True)
            line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            r = json.loads(line[0][7:]) if line else dict(ok=False, error=(p.stderr.strip().splitlines() or ["?"])[-1][:120],
                                                          peak_rss_growth_gb=float("nan"), seconds=float("nan"))
            print(f"{case:6s} {mr:>8s} {'yes' if r['ok'] else 'NO':>3s} {r.get('survivors', '-'):>9} "
                  f"{r.get('calls', '-'):>6} {r.get('rows', '-'):>7} {r.get('max_call_rows', '-'):>8} "
                  f"{r['peak_rss_growth_gb']:>12.2f} GB (peak {r.get('peak_rss_gb', float('nan')):.2f}) {r['seconds']:>6}" + ("" if r["ok"] else f"  {r['error']}"),
                  flush=True)


if __name__ == "__main__":
    main()
