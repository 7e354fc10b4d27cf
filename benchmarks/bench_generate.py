"""Steady-state decode throughput: ``epic_kernels.generate`` against HF top-p, with a cost-model floor.

On the embedded model, the same prompts for both sides: open-ended writing prompts and GSM8K
questions (``experiments/data/gsm8k/``), in the chat template. Every run produces exactly
``new_tokens`` tokens per sequence (EPIC without an EOS id, HF with ``min_new_tokens``). Each token's
arrival is time-stamped (EPIC: ``on_step``; HF: a streamer), so a run splits into

* **prefill** = start -> first token (the prompt's forward and the first step), reported apart;
* **decode** = first token -> last token: ``batch x (new_tokens - 1)`` tokens, the steady state.

Batch 1 decodes each prompt on its own; batch 8 decodes the 8 prompts left-padded in one batch.
One *pair* = HF ``model.generate(do_sample=True, top_p=0.9, top_k=None)`` then EPIC over the same
prompts (per prompt, HF then EPIC: interleaved); a case's figure is the median over pairs of
``EPIC decode tok/s / HF decode tok/s``, with every pair's value in the JSON.

**Cost model (the floor).** Every model call EPIC makes is recorded (rows = query tokens, time).
In the same run, a plain forward of N query rows on a prefix of the prompts' median length is
timed for N on a grid (median of 3, re-measured after every pair); the floor of a decode is the sum,
over EPIC's decode-phase calls, of that plain forward's time at the call's row count (linear
interpolation on the grid). ``EPIC / floor`` = EPIC's measured decode time over that sum: 1.0
would mean nothing but model calls of plain-forward cost; ``calls / floor`` splits the excess into
the calls themselves (fork attention, layout) and everything outside them.

Cases (``--cases``): ``topk50`` = the library defaults (alpha 0.2, horizon 4, 2 rollouts, top-50
candidates and rollout policy; ``generate`` called with no sampling arguments, checked against
its signature), ``full`` = the same with ``top_k=None, rollout_top_k=None`` (full vocabulary).
Each case's prompts, batch sizes and token count are in ``CASES`` and printed; the full-vocabulary
case runs fewer tokens and prompts because on a 2-core CPU it decodes at ~1 token/s (say so when
quoting it).

    python benchmarks/bench_generate.py --json out/bench_generate.json          # ~30 min here
    python benchmarks/bench_generate.py --quick                                 # ~1 min smoke run
    python benchmarks/bench_tables.py --docs                                    # regenerate the docs tables

A script, not a suite: its protocol (interleaved HF / EPIC pairs over 8 prompts x 128 tokens,
resumable across processes, a floor re-measured after every pair) takes ~30 minutes and does not
fit ``make bench``; the suite's ``generate`` table (``bench_model.py``) is its short version.
"""
from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402

import epic_kernels  # noqa: E402
from epic_kernels import defaults as D  # noqa: E402

WRITING = ["Write a short story about a lighthouse keeper.",
           "Describe your favourite city in detail.",
           "Write a letter to a friend about a trip to the mountains.",
           "Explain to a child how a bicycle works."]
N_GSM8K = 4

# case -> EPIC arguments (beyond the defaults) and, per batch, (prompts used, new tokens); at batch 1
# the prompts are decoded one at a time, at batch 8 together.
CASES = {
    "topk50": dict(label="defaults (top-50)", kwargs={},
                   runs={1: (8, 128), 8: (8, 128)}),
    "full": dict(label="full vocabulary", kwargs=dict(top_k=None, rollout_top_k=None),
                 runs={1: (2, 32), 8: (8, 24)}),
}
QUICK = {"topk50": {1: (2, 6), 8: (2, 6)}, "full": {1: (1, 4)}}
FLOOR_GRID = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def prompt_set(tok, data, n: int) -> list:
    """``n`` prompts alternating writing / GSM8K (so any prefix holds both kinds): ids ``[1, T]`` and kind."""
    from epic_kernels.models import chat_prompt_ids

    gsm = C.load_prompts(data, N_GSM8K)
    out = []
    for i in range(N_GSM8K):
        out.append(("writing", chat_prompt_ids(tok, WRITING[i])))
        out.append(("gsm8k", chat_prompt_ids(tok, gsm[i])))
    return out[:n]


class Stamps:
    """HF streamer: the time of each ``put`` (the first is the prompt, then one per new token)."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass


class CallLog:
    """Wraps ``model.forward`` to record (time stamp, rows, seconds) of every call while ``on``."""

    def __init__(self, model):
        self.model, self.on, self.calls = model, False, []
        inner = model.forward

        def forward(*a, **kw):
            if not self.on:
                return inner(*a, **kw)
            ids = kw.get("input_ids", a[0] if a else None)
            t0 = time.perf_counter()
            out = inner(*a, **kw)
            t1 = time.perf_counter()
            self.calls.append((t0, int(ids.numel()) if ids is not None else 0, t1 - t0))
            return out
        model.forward = forward


def hf_run(model, ids, mask, n, seed):
    torch.manual_seed(seed)
    st = Stamps()
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.9, top_k=None, temperature=1.0,
                   max_new_tokens=n, min_new_tokens=n, pad_token_id=0, streamer=st)
    t_end = time.perf_counter()
    tok = st.t[1:]                                  # st.t[0]: the prompt
    assert len(tok) == n, (len(tok), n)
    return dict(prefill_s=tok[0] - t0, decode_s=tok[-1] - tok[0], total_s=t_end - t0)


def epic_run(model, log, ids, mask, n, kw, seed):
    stamps = []
    log.calls.clear()
    log.on = True
    t0 = time.perf_counter()
    try:
        out = epic_kernels.generate(model, ids, attention_mask=mask, max_new_tokens=n, seed=seed,
                                    eos_token_id=None, on_step=lambda *_: stamps.append(time.perf_counter()),
                                    **kw)
    finally:
        log.on = False
    t_end = time.perf_counter()
    assert all(len(t) == n for t in out.new_tokens) and len(stamps) == n
    decode_calls = [(r, s) for t, r, s in log.calls if t >= stamps[0]]
    return dict(prefill_s=stamps[0] - t0, decode_s=stamps[-1] - stamps[0], total_s=t_end - t0,
                decode_calls=[r for r, _ in decode_calls], decode_call_s=sum(s for _, s in decode_calls),
                summary=out.summary())


def floor_times(model, prefix_ids, grid, reps: int = 3) -> dict:
    """Median seconds of a plain forward of N query rows on the cache of ``prefix_ids`` [1, L]."""
    out = model(input_ids=prefix_ids, use_cache=True)
    cache, L = out.past_key_values, prefix_ids.shape[1]
    res = {}
    for N in grid:
        ids = torch.randint(100, 1000, (1, N))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(input_ids=ids, past_key_values=cache, use_cache=True)
            ts.append(time.perf_counter() - t0)
            cache.crop(-N)                          # back to the L-token prefix
            assert cache.get_seq_length() == L
        res[N] = C.median(ts)
    return res


def interp(table: dict, n: int) -> float:
    xs = sorted(table)
    if n <= xs[0]:
        return table[xs[0]] * n / xs[0] if n < xs[0] else table[xs[0]]
    for a, b in zip(xs, xs[1:]):
        if n <= b:
            return table[a] + (table[b] - table[a]) * (n - a) / (b - a)
    return table[xs[-1]] * n / xs[-1]               # beyond the grid: proportional (never reached here)


def main(argv=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved (HF, EPIC) pairs per case")
    p.add_argument("--cases", default="topk50,full", help="comma list of: " + ",".join(CASES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--skip", default="", help="comma list of case:batch to leave out, e.g. full:8")
    p.add_argument("--resume", action="store_true",
                   help="add pairs to the existing --json file (same plan) up to --repeats pairs per case")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    torch.set_grad_enabled(False)
    model, tok, _ = C.load(args.model)
    sig = inspect.signature(epic_kernels.generate).parameters
    gen_defaults = {k: sig[k].default for k in ("alpha", "horizon", "rollouts", "top_k", "rollout_top_k",
                                                "block_size")}
    assert (gen_defaults["alpha"], gen_defaults["horizon"], gen_defaults["rollouts"], gen_defaults["top_k"]) == \
        (D.ALPHA, D.HORIZON, D.ROLLOUTS, D.TOP_K)
    prompts = prompt_set(tok, args.data, 8)
    L = int(C.median([ids.shape[1] for _, ids in prompts]))
    floor_prefix = torch.randint(100, 1000, (1, L))
    log = CallLog(model)
    batches = [int(b) for b in args.batches.split(",")]
    plan = []                                       # (case, batch, n_prompts, new_tokens)
    for c in args.cases.split(","):
        runs = QUICK[c] if args.quick else CASES[c]["runs"]
        plan += [(c, b, *runs[b]) for b in batches if b in runs and f"{c}:{b}" not in args.skip.split(",")]
    repeats = 1 if args.quick else args.repeats
    hf_run(model, *C.left_pad([prompts[0][1]]), 2, 0)                 # warm-up of both sides
    epic_kernels.generate(model, prompts[0][1], max_new_tokens=2, eos_token_id=None)
    results = {(c, b): dict(case=c, label=CASES[c]["label"], batch=b, prompts=np, new_tokens=n,
                            kinds=[k for k, _ in prompts[:np]], pairs=[]) for c, b, np, n in plan}
    floors, first = [], 0
    if args.resume and args.json and Path(args.json).exists():
        old = C.read_json(args.json)
        for res in old["results"]:
            key = (res["case"], res["batch"])
            if key in results and (res["prompts"], res["new_tokens"]) == (results[key]["prompts"], results[key]["new_tokens"]):
                results[key]["pairs"] = res["pairs"]
            elif key not in results:
                results[key] = res                   # a case skipped now keeps its earlier pairs
        floors.append({g["rows"]: g["seconds"] for g in old["floor_grid"]})
        first = min(len(results[(c, b)]["pairs"]) for c, b, _, _ in plan)
        print(f"[bench_generate] resuming at pair {first + 1}", file=sys.stderr)
    machine = C.machine()
    try:
        machine["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if first:
        machine["earlier_runs"] = [dict(old["machine"], args=old.get("args"))] + old["machine"].get("earlier_runs", [])
    payload = dict(machine=machine, args=vars(args), generate_defaults=gen_defaults, prefix_len=L,
                   floor_grid=[], results=[])
    for r in range(first, repeats):
        for c, b, np, n in plan:
            if len(results[(c, b)]["pairs"]) > r:
                continue
            groups = [[prompts[i][1]] for i in range(np)] if b == 1 else [[ids for _, ids in prompts[:np]]]
            hf = dict(prefill_s=0.0, decode_s=0.0)
            ep = dict(prefill_s=0.0, decode_s=0.0, decode_call_s=0.0, decode_calls=[], calls=0, rows=0,
                      tokens=0, survivors=[])
            for g, seqs in enumerate(groups):
                ids, mask = C.left_pad(seqs)
                h = hf_run(model, ids, mask, n, args.seed + 1000 * r + g)
                e = epic_run(model, log, ids, mask, n, CASES[c]["kwargs"], args.seed + 1000 * r + g)
                for k in ("prefill_s", "decode_s"):
                    hf[k] += h[k]
                    ep[k] += e[k]
                ep["decode_call_s"] += e["decode_call_s"]
                ep["decode_calls"] += e["decode_calls"]
                s = e["summary"]
                ep["calls"] += s["forward_calls_per_token"] * s["tokens"]
                ep["rows"] += s["forward_tokens_per_token"] * s["tokens"]
                ep["tokens"] += s["tokens"]
                ep["survivors"].append(s["mean_survivors"])
            decode_tokens = len(groups) * len(groups[0]) * (n - 1)
            results[(c, b)]["pairs"].append(dict(
                repeat=r, hf_decode_tok_s=decode_tokens / hf["decode_s"], epic_decode_tok_s=decode_tokens / ep["decode_s"],
                ratio=hf["decode_s"] / ep["decode_s"], hf_prefill_s=hf["prefill_s"] / len(groups),
                epic_prefill_s=ep["prefill_s"] / len(groups), epic_decode_s=ep["decode_s"], hf_decode_s=hf["decode_s"],
                epic_call_s=ep["decode_call_s"], decode_call_rows=ep["decode_calls"],
                calls_per_token=ep["calls"] / ep["tokens"], rows_per_token=ep["rows"] / ep["tokens"],
                survivors=sum(ep["survivors"]) / len(ep["survivors"])))
            print(f"[bench_generate] pair {r + 1}/{repeats} {c} batch {b}: HF {hf['decode_s']:.1f}s EPIC "
                  f"{ep['decode_s']:.1f}s decode, ratio {hf['decode_s'] / ep['decode_s']:.3f}", file=sys.stderr, flush=True)
        grid = [N for N in FLOOR_GRID if N <= max([1] + [max(x["decode_call_rows"] or [1]) for res in results.values()
                                                         for x in res["pairs"]]) * 2]
        floors.append(floor_times(model, floor_prefix, grid if len(grid) > 1 else FLOOR_GRID[:2]))
        # the floor: per grid point, the median over the measurements so far (one per pair)
        table = {N: C.median([f[N] for f in floors if N in f]) for N in floors[-1]}
        for res in results.values():
            for x in res["pairs"]:
                x["floor_s"] = sum(interp(table, rows) for rows in x["decode_call_rows"])
                x["epic_over_floor"] = x["epic_decode_s"] / x["floor_s"]
                x["calls_over_floor"] = x["epic_call_s"] / x["floor_s"]
            ps = res["pairs"]
            res.update({k: C.median([x[k] for x in ps]) for k in (
                "ratio", "hf_decode_tok_s", "epic_decode_tok_s", "hf_prefill_s", "epic_prefill_s", "epic_over_floor",
                "calls_over_floor", "calls_per_token", "rows_per_token", "survivors")})
        payload["floor_grid"] = [dict(rows=N, seconds=t) for N, t in sorted(table.items())]
        payload["results"] = list(results.values())
        payload["machine"]["loadavg_end"] = C.loadavg()
        C.write_json(args.json, payload)             # after every round of pairs: a partial run keeps them
    rows = []
    for res in results.values():
        rows.append([res["label"], res["batch"], f"{res['prompts']} x {res['new_tokens']}", res["hf_decode_tok_s"],
                     res["epic_decode_tok_s"], res["ratio"], " / ".join(f"{x['ratio']:.3f}" for x in res["pairs"]),
                     res["hf_prefill_s"], res["epic_prefill_s"], res["epic_over_floor"], res["calls_over_floor"],
                     res["calls_per_token"], res["rows_per_token"]])
    print(f"\n## bench_generate: steady-state decode, {repeats} interleaved pairs, {args.threads} threads, "
          f"git {C.git_revision()}, CPU only\n")
    print(C.md_table(["EPIC", "batch", "prompts x tokens", "HF top-p decode tok/s", "EPIC decode tok/s",
                      "EPIC / HF (median)", "pairs", "HF prefill s", "EPIC prefill s", "EPIC / floor",
                      "model calls / floor", "calls/token", "rows/token"], rows))
    return payload


if __name__ == "__main__":
    main()
    raise SystemExit(0)
