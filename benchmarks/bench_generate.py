"""Steady-state decode throughput: ``epic_kernels.generate`` against HF top-p, with the floor of plain batched decoding.

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

**Where EPIC's decode time goes.** Every model call EPIC makes is timed by wrapping
``model.forward`` (rows = query tokens, seconds); a call belongs to the decode when it starts after
the first token. ``in model calls`` = their seconds over the decode's wall time; the **library's
host time** = decode wall time minus the time inside model calls, per token emitted and per batch
step (the prune, the manager, the bookkeeping: everything the library does outside the model);
the prefill's calls are reported apart.

**The floor: plain batched decoding of the same rows.** A model call of N rows is N one-token rows,
each over its own sequence's context. The floor prices it as plain decoding would: one decode
forward of N one-token rows, each over its own sequence's prompt prefix in an HF ``DynamicCache``,
as a batched decode of N sequences has them. Batch 1: the N rows are N copies of that prompt (a
batched decode of N sequences of the same prompt). Batch 8: the rows are spread evenly over the 8
prompts (row r over prompt r mod 8), left-padded to the longest as a batched decode has them, so
every row attends over the same padded length whatever the split (EPIC's per-sequence split is not
visible from the call, and a padded decode's cost does not depend on it). The cache of N rows is
built from one prefill of the prompt set (left-padded, untimed) by a batch index of its keys and
values: the same keys and values a prefill of the N rows computes, at a fraction of its cost. Only
the one-token decode forward is timed (``--floor-reps`` times, default once, per grid point and
round), the cache cropped back to the prefix after each. Per prompt set the grid of N (``FLOOR_GRID``) runs up to the first point at or
above the most rows EPIC's calls on that set fed so far, and is re-measured after every round of
pairs; a call's floor is the median over rounds at each grid point, linearly interpolated; calls
beyond the grid (beyond ``FLOOR_MAX_TOKENS`` cached tokens, the full-vocabulary case's largest
calls) are extrapolated at the last segment's cost per row (their share is in the JSON).
``model calls / floor`` = the seconds inside EPIC's decode calls over that floor (1.0: EPIC's calls
cost what plain decoding of the same rows costs; below 1: the fork shares the prefix that plain
decoding copies and reads once per row); ``EPIC / floor`` = EPIC's whole decode over it. The floor's
prefix is the prompt's, while the contexts grow up to ``new_tokens`` past it.

Cases (``--cases``): ``topk50`` = the library defaults (alpha 0.2, horizon 4, 2 rollouts, top-50
candidates and rollout policy; ``generate`` called with no sampling arguments, checked against
its signature), ``full`` = the same with ``top_k=None, rollout_top_k=None`` (full vocabulary).
Each case's prompts, batch sizes and token count are in ``CASES`` and printed; the full-vocabulary
case runs fewer tokens and prompts because on a 2-core CPU it decodes at ~1 token/s (say so when
quoting it).

    python benchmarks/bench_generate.py --cases topk50 --json benchmarks/results/bench_generate.json   # ~25 min (3 pairs)
    python benchmarks/bench_generate.py --cases full --json benchmarks/results/bench_generate.json --resume  # adds full (~25 min)
    python benchmarks/bench_generate.py --quick                                 # smoke run, ~1 min
    python benchmarks/bench_tables.py --docs                                    # regenerate the docs tables

A script, not a suite: its protocol (interleaved HF / EPIC pairs over 8 prompts x 128 tokens,
resumable across processes, a floor re-measured after every round of pairs) does not fit
``make bench``; the suite's ``generate`` table (``bench_model.py``) is its short version.
"""
from __future__ import annotations

import copy
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
FLOOR_MAX_TOKENS = 40_000     # rows x prefix of one floor cache: ~1.8 GB of float32 KV on SmolLM2 (46 KB a token)
FLOOR_KIND = "plain batched decode"   # bench_tables.py shows floor columns only from a JSON with this floor


def prompt_set(tok, data, n: int) -> list:
    """``n`` prompts alternating writing / GSM8K (so any prefix holds both kinds): ids ``[1, T]`` and kind."""
    from epic_kernels.models import chat_prompt_ids

    gsm = C.load_prompts(data, N_GSM8K)
    out = []
    for i in range(N_GSM8K):
        out.append(("writing", chat_prompt_ids(tok, WRITING[i])))
        out.append(("gsm8k", chat_prompt_ids(tok, gsm[i])))
    return out[:n]


def groups_of(batch: int, n_prompts: int) -> list[list[int]]:
    """The prompt indices of each decode of a case: one prompt at a time at batch 1, all together otherwise."""
    return [[i] for i in range(n_prompts)] if batch == 1 else [list(range(n_prompts))]


def set_key(indices) -> str:
    """A prompt set's name in the JSON: its prompt indices joined by '+' ("3"; "0+1+2+3+4+5+6+7")."""
    return "+".join(str(i) for i in indices)


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
    """One EPIC decode: prefill / decode seconds, the decode's model calls (rows each, seconds in
    them) and the prefill's seconds in calls."""
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
                prefill_call_s=sum(s for t, _, s in log.calls if t < stamps[0]), summary=out.summary())


# ---------------------------------------------------------------------------------------------- #
# the floor: plain batched decode forwards of the same rows
# ---------------------------------------------------------------------------------------------- #
class FloorCache:
    """A prompt set prefilled once, left-padded as a batched decode has it (untimed set-up), and the
    inputs of one decode step of N one-token rows over it: row r over prompt ``r mod B``."""

    def __init__(self, model, seqs):
        ids, mask = C.left_pad(seqs)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.cache, self.mask, self.last = out.past_key_values, mask, ids[:, -1]
        self.length = ids.shape[1]                 # the padded prefix every row attends over

    def rows(self, N: int):
        """``(cache, kwargs)`` of a decode forward of N rows: the cache is a batch index of the
        prefill's (each row its own copy of its prompt's keys and values, as a prefill of the N rows
        computes them), fed each row's last prompt token (any token costs the same)."""
        sel = torch.arange(N) % self.mask.shape[0]
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(sel)
        mask = torch.cat([self.mask[sel], torch.ones(N, 1, dtype=self.mask.dtype)], dim=1)
        return cache, dict(input_ids=self.last[sel].view(N, 1), attention_mask=mask,
                           position_ids=mask.sum(-1, keepdim=True) - 1, use_cache=True)


def floor_times(model, seqs, grid, reps: int = 3) -> dict:
    """Median seconds of one plain decode forward of N one-token rows over the prompt set ``seqs``
    (list of ids ``[1, T]``), for N in ``grid``; the cache is cropped back to the prefix after each."""
    fc = FloorCache(model, seqs)
    res = {}
    for N in grid:
        cache, kw = fc.rows(N)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(past_key_values=cache, **kw)
            ts.append(time.perf_counter() - t0)
            cache.crop(-1)                          # back to the prefix (a decode forward appends a token)
            assert cache.get_seq_length() == fc.length
        res[N] = C.median(ts)
        del cache
    return res


def floor_grid(max_rows: int, length: int) -> list[int]:
    """The grid points of a prompt set: up to the first at or above ``max_rows``, within the cache budget."""
    pts = [N for N in FLOOR_GRID if N * length <= FLOOR_MAX_TOKENS] or list(FLOOR_GRID[:1])
    top = next((N for N in pts if N >= max_rows), pts[-1])
    grid = [N for N in pts if N <= top]
    return grid if len(grid) > 1 else list(FLOOR_GRID[:2])


def interp(table: dict, n: int) -> tuple[float, bool]:
    """``(seconds, extrapolated)`` of a call of ``n`` rows: linear between grid points; beyond the
    grid, the last segment's cost per row (never below the last point)."""
    xs = sorted(table)
    if n <= xs[0]:
        return table[xs[0]], False
    for a, b in zip(xs, xs[1:]):
        if n <= b:
            return table[a] + (table[b] - table[a]) * (n - a) / (b - a), False
    if len(xs) == 1:
        return table[xs[0]] * n / xs[0], True
    a, b = xs[-2], xs[-1]
    return table[b] + max(0.0, (table[b] - table[a]) / (b - a)) * (n - b), True


def floor_tables(rounds: list) -> dict:
    """Per prompt set, per N: the median over the rounds that measured it."""
    acc = {}
    for rd in rounds:
        for key, pts in rd["sets"].items():
            for N, s in pts:
                acc.setdefault(key, {}).setdefault(N, []).append(s)
    return {key: {N: C.median(v) for N, v in sorted(d.items())} for key, d in acc.items()}


def price_pair(x: dict, tables: dict) -> None:
    """The floor of one pair's decode calls and the ratios against it, in place."""
    total = extra = 0.0
    for key, rows in x["decode_call_rows"].items():
        for r in rows:
            s, out = interp(tables[key], r)
            total += s
            extra += s if out else 0.0
    x["floor_s"] = total
    x["floor_extrapolated_share"] = extra / total if total else 0.0
    x["epic_over_floor"] = x["epic_decode_s"] / total
    x["calls_over_floor"] = x["epic_call_s"] / total


MEDIANS = ("ratio", "hf_decode_tok_s", "epic_decode_tok_s", "hf_prefill_s", "epic_prefill_s", "epic_prefill_call_s",
           "call_share", "host_ms_per_token", "host_ms_per_step", "epic_over_floor", "calls_over_floor",
           "floor_extrapolated_share", "calls_per_token", "rows_per_token", "survivors")


def main(argv=None, model=None, tok=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved (HF, EPIC) pairs per case (default 3; 1 with --quick)")
    p.add_argument("--cases", default="topk50,full", help="comma list of: " + ",".join(CASES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--skip", default="", help="comma list of case:batch to leave out, e.g. full:8")
    p.add_argument("--floor-reps", type=int, default=1,
                   help="timed decode forwards per floor grid point and round (their median); the floor is the "
                        "median over rounds")
    p.add_argument("--resume", action="store_true",
                   help="add pairs to the existing --json file (same plan) up to --repeats pairs per case")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    floor_reps = args.floor_reps
    old = None
    if args.resume and args.json and Path(args.json).exists():
        old = C.read_json(args.json)
        if old.get("floor_kind") != FLOOR_KIND:
            raise SystemExit(f"{args.json} was written with another floor ({old.get('floor_kind', 'a prefill of N tokens')}); "
                             "its pairs cannot be priced against this one: start a new --json without --resume")
    C.setup_torch(args.threads)
    torch.set_grad_enabled(False)
    if model is None:
        model, tok, _ = C.load(args.model)
    sig = inspect.signature(epic_kernels.generate).parameters
    gen_defaults = {k: sig[k].default for k in ("alpha", "horizon", "rollouts", "top_k", "rollout_top_k",
                                                "block_size")}
    assert (gen_defaults["alpha"], gen_defaults["horizon"], gen_defaults["rollouts"], gen_defaults["top_k"]) == \
        (D.ALPHA, D.HORIZON, D.ROLLOUTS, D.TOP_K)
    prompts = prompt_set(tok, args.data, 8)
    log = getattr(model, "_bench_call_log", None) or CallLog(model)   # one wrapper per model, however often main runs
    model._bench_call_log = log
    batches = [int(b) for b in args.batches.split(",")]
    plan = []                                       # (case, batch, n_prompts, new_tokens)
    for c in args.cases.split(","):
        runs = QUICK[c] if args.quick else CASES[c]["runs"]
        plan += [(c, b, *runs[b]) for b in batches if b in runs and f"{c}:{b}" not in args.skip.split(",")]
    sets = {set_key(g): g for _, b, np, _ in plan for g in groups_of(b, np)}      # the prompt sets the floor needs
    hf_run(model, *C.left_pad([prompts[0][1]]), 2, 0)                 # warm-up of both sides
    epic_kernels.generate(model, prompts[0][1], max_new_tokens=2, eos_token_id=None)
    results = {(c, b): dict(case=c, label=CASES[c]["label"], batch=b, prompts=np, new_tokens=n,
                            kinds=[k for k, _ in prompts[:np]], pairs=[]) for c, b, np, n in plan}
    rounds, first = [], 0
    if old is not None:
        for res in old["results"]:
            key = (res["case"], res["batch"])
            if key in results and (res["prompts"], res["new_tokens"]) == (results[key]["prompts"], results[key]["new_tokens"]):
                results[key]["pairs"] = res["pairs"]
            elif key not in results:
                results[key] = res                   # a case skipped now keeps its earlier pairs
        rounds = old["floor_rounds"]
        first = min(len(results[(c, b)]["pairs"]) for c, b, _, _ in plan)
        print(f"[bench_generate] resuming at pair {first + 1}", file=sys.stderr)
    machine = C.machine()
    try:
        machine["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:                    # which body of the C++ kernels runs (CPUs named alike differ: AVX2 vs AVX-512)
        from epic_kernels import _ext

        machine["isa_body"] = str(_ext.ops()._cpu_isa())
    except (AttributeError, RuntimeError):
        machine["isa_body"] = "unknown (extension not loaded)"
    if old is not None:
        machine["earlier_runs"] = [dict(old["machine"], args=old.get("args"))] + old["machine"].get("earlier_runs", [])
    payload = dict(machine=machine, args=vars(args), generate_defaults=gen_defaults, floor_kind=FLOOR_KIND,
                   floor_reps=floor_reps, prefix_lens={}, floor_grid={}, floor_rounds=rounds, results=[])
    if old is not None:
        payload["prefix_lens"] = dict(old.get("prefix_lens", {}))
    for r in range(first, repeats):
        for c, b, np, n in plan:
            if len(results[(c, b)]["pairs"]) > r:
                continue
            groups = groups_of(b, np)
            hf = dict(prefill_s=0.0, decode_s=0.0)
            ep = dict(prefill_s=0.0, decode_s=0.0, decode_call_s=0.0, prefill_call_s=0.0, decode_calls={}, calls=0,
                      rows=0, tokens=0, survivors=[])
            for g, idx in enumerate(groups):
                ids, mask = C.left_pad([prompts[i][1] for i in idx])
                h = hf_run(model, ids, mask, n, args.seed + 1000 * r + g)
                e = epic_run(model, log, ids, mask, n, CASES[c]["kwargs"], args.seed + 1000 * r + g)
                for k in ("prefill_s", "decode_s"):
                    hf[k] += h[k]
                    ep[k] += e[k]
                ep["decode_call_s"] += e["decode_call_s"]
                ep["prefill_call_s"] += e["prefill_call_s"]
                ep["decode_calls"][set_key(idx)] = e["decode_calls"]
                s = e["summary"]
                ep["calls"] += s["forward_calls_per_token"] * s["tokens"]
                ep["rows"] += s["forward_tokens_per_token"] * s["tokens"]
                ep["tokens"] += s["tokens"]
                ep["survivors"].append(s["mean_survivors"])
            decode_tokens = np * (n - 1)
            decode_steps = len(groups) * (n - 1)
            host_s = ep["decode_s"] - ep["decode_call_s"]
            results[(c, b)]["pairs"].append(dict(
                repeat=r, hf_decode_tok_s=decode_tokens / hf["decode_s"], epic_decode_tok_s=decode_tokens / ep["decode_s"],
                ratio=hf["decode_s"] / ep["decode_s"], hf_prefill_s=hf["prefill_s"] / len(groups),
                epic_prefill_s=ep["prefill_s"] / len(groups), epic_prefill_call_s=ep["prefill_call_s"] / len(groups),
                epic_decode_s=ep["decode_s"], hf_decode_s=hf["decode_s"], epic_call_s=ep["decode_call_s"],
                decode_tokens=decode_tokens, decode_steps=decode_steps, epic_host_s=host_s,
                call_share=ep["decode_call_s"] / ep["decode_s"], host_ms_per_token=1e3 * host_s / decode_tokens,
                host_ms_per_step=1e3 * host_s / decode_steps, decode_call_rows=ep["decode_calls"],
                calls_per_token=ep["calls"] / ep["tokens"], rows_per_token=ep["rows"] / ep["tokens"],
                survivors=sum(ep["survivors"]) / len(ep["survivors"])))
            print(f"[bench_generate] pair {r + 1}/{repeats} {c} batch {b}: HF {hf['decode_s']:.1f}s EPIC "
                  f"{ep['decode_s']:.1f}s decode ({100 * ep['decode_call_s'] / ep['decode_s']:.0f} % in model calls), "
                  f"ratio {hf['decode_s'] / ep['decode_s']:.3f}", file=sys.stderr, flush=True)
        # the floor, re-measured after every round: each prompt set of the plan, up to its largest call so far
        t0, measured = time.perf_counter(), {}
        for key, idx in sets.items():
            seqs = [prompts[i][1] for i in idx]
            length = max(s.shape[1] for s in seqs)
            most = max([1] + [max(x["decode_call_rows"].get(key) or [1]) for (c, b), res in results.items()
                              if any((c, b) == (pc, pb) for pc, pb, _, _ in plan) for x in res["pairs"]])
            measured[key] = sorted(floor_times(model, seqs, floor_grid(most, length), floor_reps).items())
            payload["prefix_lens"][key] = length
        rounds.append(dict(after_round=r, seconds=time.perf_counter() - t0, loadavg=C.loadavg(), sets=measured))
        print(f"[bench_generate] floor after round {r + 1}: {rounds[-1]['seconds']:.0f}s", file=sys.stderr, flush=True)
        tables = floor_tables(rounds)
        for res in results.values():
            for x in res["pairs"]:
                price_pair(x, tables)
            res.update({k: C.median([x.get(k) for x in res["pairs"]]) for k in MEDIANS})
        payload["floor_grid"] = {key: [dict(rows=N, seconds=t) for N, t in t_.items()] for key, t_ in tables.items()}
        payload["results"] = list(results.values())
        payload["machine"]["loadavg_end"] = C.loadavg()
        C.write_json(args.json, payload)             # after every round of pairs: a partial run keeps them
    rows = []
    for res in results.values():
        rows.append([res["label"], res["batch"], f"{res['prompts']} x {res['new_tokens']}", res["hf_decode_tok_s"],
                     res["epic_decode_tok_s"], res["ratio"], " / ".join(f"{x['ratio']:.3f}" for x in res["pairs"]),
                     res["hf_prefill_s"], res["epic_prefill_s"], f"{100 * res['call_share']:.0f} %",
                     res["host_ms_per_token"], res["host_ms_per_step"], res["calls_over_floor"], res["epic_over_floor"],
                     res["calls_per_token"], res["rows_per_token"]])
    print(f"\n## bench_generate: steady-state decode, {repeats} interleaved pairs, {args.threads} threads, "
          f"git {C.git_revision()}, CPU only; floor: {FLOOR_KIND} of the same rows, "
          f"{sum(x['seconds'] for x in rounds):.0f}s measuring it\n")
    print(C.md_table(["EPIC", "batch", "prompts x tokens", "HF top-p decode tok/s", "EPIC decode tok/s",
                      "EPIC / HF (median)", "pairs", "HF prefill s", "EPIC prefill s", "in model calls (of decode)",
                      "library host ms/token", "host ms/step", "model calls / floor", "EPIC / floor", "calls/token",
                      "rows/token"], rows))
    return payload


if __name__ == "__main__":
    main()
    raise SystemExit(0)
