"""Compare a suites run (pytest-benchmark JSON) with a saved baseline; flag changes beyond the noise.

For every benchmark in both runs: ``change = new median / baseline median``. Its noise threshold
is measured, not assumed:

* with ``--noise A.json B.json`` (two runs of the same revision, e.g. ``make bench`` twice), the
  benchmark's own ``|log(A / B)|`` between those runs, times ``--k`` (default 2);
* otherwise the spread inside the two compared runs: ``--k`` x the larger relative IQR
  (``iqr / median``) of the benchmark in either run;

and never below ``--floor`` (default 5 %). A change above ``1 + threshold`` is a REGRESSION, below
``1 / (1 + threshold)`` an improvement. ``--normalize`` divides every change by the median change
of the whole run first (the machine got slower or faster as a whole: on a shared machine the
load moves every figure together); both columns are printed either way. Exit status 1 when a
benchmark regressed (``--fail``), else 0.

    make bench-compare                                   # new run vs benchmarks/results/bench.json
    python benchmarks/bench_compare.py BASE.json NEW.json --noise RUN1.json RUN2.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys


def load(path) -> dict:
    with open(path) as f:
        data = json.load(f)
    return {b["fullname"]: b["stats"] for b in data["benchmarks"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("baseline")
    p.add_argument("new")
    p.add_argument("--noise", nargs=2, metavar=("RUN1", "RUN2"), help="two runs of one revision: the noise")
    p.add_argument("--k", type=float, default=2.0, help="threshold = k x measured noise")
    p.add_argument("--floor", type=float, default=0.05, help="smallest threshold (relative)")
    p.add_argument("--normalize", action="store_true", help="flag on changes divided by the run's median change")
    p.add_argument("--fail", action="store_true", help="exit 1 on a regression")
    args = p.parse_args(argv)
    base, new = load(args.baseline), load(args.new)
    noise = None
    if args.noise:
        a, b = load(args.noise[0]), load(args.noise[1])
        noise = {k: abs(math.log(a[k]["median"] / b[k]["median"])) for k in a.keys() & b.keys()}
    names = sorted(base.keys() & new.keys())
    if not names:
        print("no benchmark in both runs", file=sys.stderr)
        return 1
    change = {k: new[k]["median"] / base[k]["median"] for k in names}
    drift = statistics.median(change.values())
    rows, regressions = [], []
    for k in names:
        if noise is not None and k in noise:
            thr, src = math.exp(args.k * noise[k]) - 1, "2 runs"
        else:
            spread = max(base[k]["iqr"] / base[k]["median"], new[k]["iqr"] / new[k]["median"])
            thr, src = args.k * spread, "IQR"
        thr = max(thr, args.floor)
        c = change[k] / drift if args.normalize else change[k]
        verdict = "REGRESSION" if c > 1 + thr else ("faster" if c < 1 / (1 + thr) else "")
        if verdict == "REGRESSION":
            regressions.append(k)
        rows.append((k.split("::", 1)[-1], base[k]["median"] * 1e3, new[k]["median"] * 1e3, change[k],
                     change[k] / drift, thr, src, verdict))
    print(f"baseline {args.baseline}\nnew      {args.new}\nrun drift (median change of all benchmarks): {drift:.3f}x\n")
    print("| benchmark | baseline ms | new ms | new / baseline | drift-corrected | threshold | noise from | |")
    print("|---|---|---|---|---|---|---|---|")
    for n, b, w, c, cn, t, s, v in rows:
        print(f"| {n} | {b:.4g} | {w:.4g} | {c:.3f} | {cn:.3f} | ±{t:.0%} | {s} | {v} |")
    print(f"\n{len(regressions)} regression(s) beyond the noise"
          + (" (drift-corrected)" if args.normalize else "") + (": " + ", ".join(regressions) if regressions else ""))
    return 1 if args.fail and regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
