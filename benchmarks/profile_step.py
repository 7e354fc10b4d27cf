"""Where a fast EPIC step's time goes, so the next bottleneck is visible.

Decodes ``--steps`` tokens the way ``epic_kernels.generate`` does on its fast path (prefill once, then
``fast_sample`` + ``EpicCache.append`` per step, each step handing its prefetch to the next;
``--no-prefetch`` to compare) with exclusive-time wrappers around the engine's
functions (in this process only; no library file is modified):

* model forward, split into lm_head, MLPs, attention projections (q/k/v/o + rotary: the attention
  module minus the attention function), fork attention, and the rest of the model (embeddings,
  norms, mask preparation, HF glue);
* kernels: the Gumbel prune, rollout-policy top-k, softmax-entropy(+sample), keyed noise;
* manager (bounds, pruning, blocks: ``next_requests``/``update``), bookkeeping (``ForkBatch.build``,
  slot pool, ``Evaluator.run`` and ``_entropy_and_samples`` glue, ``partial_sums``);
* Python and everything else in the step (``fast_sample`` glue, truncation, cache append).

The step time is also given in units of one plain single-row decode forward (HF cache, SDPA),
measured interleaved with the steps, and a table gives the cost of one model call against the number
of rows it feeds (1 ... 128): on CPU a call streams every weight once whatever the rows, so calls,
not tokens, set a step's cost until the rows are many. A ``torch.profiler`` table of the top aten ops of two steps
follows (``--no-torch-profiler`` to skip), and ``--cprofile`` adds the top Python functions.

    python benchmarks/profile_step.py                      # both settings, 16 steps each
    python benchmarks/profile_step.py --quick
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402

import epic_kernels.philox as philox  # noqa: E402
from epic_kernels.engine import attention as A  # noqa: E402
from epic_kernels.engine import evaluator as E  # noqa: E402
from epic_kernels.engine import prefetch as P  # noqa: E402
from epic_kernels.engine import search as SE  # noqa: E402
from epic_kernels.engine import step as S  # noqa: E402
from epic_kernels.cache import EpicCache  # noqa: E402
from epic_kernels.core import Prefix  # noqa: E402
from epic_kernels.reference import EpicConfig  # noqa: E402
from epic_kernels.truncation import truncate  # noqa: E402

SETTINGS = {"topk50": ("top-k 50", 50, 50), "full": ("full vocab", None, None)}

# (label, category) of every timer; categories are the rows of the breakdown table
CATEGORY = {
    "lm_head": "model: lm_head", "mlp": "model: MLPs", "self_attn": "model: attn projections + rotary",
    "fork_attention": "fork attention", "evaluator._forward": "model: rest (embed, norms, masks, glue)",
    "prune": "kernel: Gumbel prune", "topk_support": "kernel: rollout top-k",
    "softmax_entropy": "kernel: softmax entropy (+sample)", "noise_at": "kernel: keyed noise (top-k path)",
    "entropy_and_samples": "bookkeeping: entropy/sample glue",
    "manager": "manager (bounds, prune, blocks)", "ForkBatch.build": "bookkeeping: ForkBatch.build",
    "pool": "bookkeeping: slot pool", "pool copy": "bookkeeping: slot copies (fan-out, bets)", "evaluator.run": "bookkeeping: Evaluator.run",
    "partial_sums": "bookkeeping: partial_sums", "Evaluator.__init__": "bookkeeping: Evaluator init",
    "fast_sample": "Python/other in fast_sample", "truncate": "Python/other: truncate + cache append",
    "append": "Python/other: truncate + cache append",
    "prefetch": "prefetch: bets, predictions, hand-over", "adopt": "prefetch: adopt",
    "evaluator.plan": "bookkeeping: Evaluator.run", "evaluator.absorb": "bookkeeping: Evaluator.run",
}


class Timers:
    """Exclusive-time wrappers: a wrapped call's time minus that of wrapped calls inside it."""

    def __init__(self):
        self.excl = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack = []
        self.enabled = True

    def wrap(self, name, fn):
        def wrapped(*a, **kw):
            if not self.enabled:
                return fn(*a, **kw)
            self.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                child = self.stack.pop()
                self.excl[name] += dt - child
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1] += dt
        return wrapped

    def reset(self):
        self.excl.clear()
        self.calls.clear()


class TimedManager:
    def __init__(self, mgr, timers):
        self._m = mgr
        self.next_requests = timers.wrap("manager", mgr.next_requests)
        self.update = timers.wrap("manager", mgr.update)
        self.winners = timers.wrap("manager", mgr.winners)
        self.stats = timers.wrap("manager", mgr.stats)


def instrument(model, T: Timers):
    """Install the wrappers (module attributes of the engine and instance forwards of the model)."""
    from transformers import AttentionInterface

    SE.gumbel_topk_prune_impl = T.wrap("prune", SE.gumbel_topk_prune_impl)
    P.Prefetcher.plan = T.wrap("prefetch", P.Prefetcher.plan)
    P.Prefetcher.absorb = T.wrap("prefetch", P.Prefetcher.absorb)
    P.Prefetcher.hand_over = T.wrap("prefetch", P.Prefetcher.hand_over)
    S._adopt = T.wrap("adopt", S._adopt)
    E.Evaluator.plan = T.wrap("evaluator.plan", E.Evaluator.plan)
    E.Evaluator.absorb = T.wrap("evaluator.absorb", E.Evaluator.absorb)
    make = S.make_manager
    S.make_manager = P.make_manager = lambda *a, **kw: TimedManager(make(*a, **kw), T)
    S.Evaluator = E.Evaluator
    E.Evaluator.__init__ = T.wrap("Evaluator.__init__", E.Evaluator.__init__)
    E.Evaluator._forward = T.wrap("evaluator._forward", E.Evaluator._forward)
    E.Evaluator.run = T.wrap("evaluator.run", E.Evaluator.run)
    E.Evaluator._entropy_and_samples = T.wrap("entropy_and_samples", E.Evaluator._entropy_and_samples)
    E.softmax_entropy_impl = T.wrap("softmax_entropy", E.softmax_entropy_impl)
    E.topk_support = T.wrap("topk_support", E.topk_support)
    E.partial_sums = T.wrap("partial_sums", E.partial_sums)
    philox.noise_at = T.wrap("noise_at", philox.noise_at)
    E.ForkBatch.build = classmethod(T.wrap("ForkBatch.build", E.ForkBatch.build.__func__))
    A.SlotPool.reserve = T.wrap("pool", A.SlotPool.reserve)
    A.SlotPool.copy_slots = T.wrap("pool copy", A.SlotPool.copy_slots)
    fork = T.wrap("fork_attention", A.fork_attention)
    A._register.done = True                           # register our timed version instead
    AttentionInterface.register(A.ATTENTION_NAME, fork)
    model.lm_head.forward = T.wrap("lm_head", model.lm_head.forward)
    for layer in model.model.layers:
        layer.mlp.forward = T.wrap("mlp", layer.mlp.forward)
        layer.self_attn.forward = T.wrap("self_attn", layer.self_attn.forward)
    S_fast = T.wrap("fast_sample", S.fast_sample)
    return S_fast


def plain_forward_fn(model, ids):
    """One single-row decode forward on an HF cache of the prompt (what HF generate does per token)."""
    out = model(input_ids=ids, use_cache=True)
    kv = out.past_key_values
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    L = ids.shape[1]

    def fn():
        model(input_ids=tok, position_ids=torch.tensor([[L]]), past_key_values=kv, use_cache=True)
        kv.crop(-1)                                    # back to the prompt
    return fn


@torch.no_grad()
def call_scaling(model, ids, rows_list, repeats: int):
    """Median ms of one decode forward of N rows (HF cache of the prompt copied N times, SDPA), the
    rows' calls interleaved: how much of a model call is a fixed cost (weights streamed once)."""
    import copy

    out = model(input_ids=ids[:1], use_cache=True)
    L = ids.shape[1]
    fns = {}
    for n in rows_list:
        kv = copy.deepcopy(out.past_key_values)
        kv.batch_repeat_interleave(n)
        tok = torch.full((n, 1), int(out.logits[0, -1].argmax()))

        def fn(kv=kv, tok=tok, n=n):
            model(input_ids=tok, position_ids=torch.full((n, 1), L), past_key_values=kv, use_cache=True)
            kv.crop(-1)
        fns[n] = fn
    times = {n: [] for n in fns}
    for n in fns:
        fns[n]()
    for r in range(repeats):
        for n in (rows_list if r % 2 == 0 else rows_list[::-1]):
            times[n].append(C.timed(fns[n])[1])
    return {n: C.median(t) * 1e3 for n, t in times.items()}


@torch.no_grad()
def profile_setting(model, ids, key, args, T, fast, plain):
    name, top_k, rtop_k = SETTINGS[key]
    cfg = EpicConfig(alpha=args.alpha, horizon=args.horizon, rollouts=args.rollouts, rollout_top_k=rtop_k,
                     block_size=args.block_size)
    B = ids.shape[0]
    mask = torch.ones_like(ids)
    seeds = torch.arange(B, dtype=torch.int64) + args.seed
    trunc = T.wrap("truncate", truncate)

    def run(n, bar=False, ctx=None, plain_too=True):
        """Prefill (never timed), then n steps; ``ctx`` (a profiler) wraps only the steps."""
        was, T.enabled = T.enabled, False
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        T.enabled = was
        logits, cache = out.logits[:, -1, :], EpicCache.from_cache(out.past_key_values)
        cur_mask = mask

        def append(keys, values):
            nxt = cache.fork()
            nxt.append(keys, values)
            return nxt
        append = T.wrap("append", append)
        prefetched = pool = None
        transform = None if args.no_prefetch else (lambda x, seq, toks: trunc(x, top_k))
        steps, plains, calls, rows = [], [], 0, 0
        it = C.progress_bar(range(n), args.no_progress or not bar, desc=name)
        if ctx is not None:
            ctx.__enter__()
        for _ in it:
            if plain_too:
                was, T.enabled = T.enabled, False
                _, tp = C.timed(plain)
                plains.append(tp)
                T.enabled = was
            t0 = time.perf_counter()
            res = fast(trunc(logits, top_k), Prefix.view(cache, cur_mask, seeds), model, cfg, None, advance=True,
                       prefetched=prefetched, transform=transform, pool=pool)
            cache = append(res.next_keys, res.next_values)
            cur_mask = torch.cat([cur_mask, torch.ones_like(cur_mask[:, :1])], dim=1)
            logits, prefetched, pool = res.next_logits, res.prefetched, res.pool
            steps.append(time.perf_counter() - t0)
            calls += res.stats.forward_calls + res.stats.finish_calls
            rows += res.stats.forward_tokens + res.stats.finish_tokens
        if ctx is not None:
            ctx.__exit__(None, None, None)
        return steps, plains, calls, rows

    T.enabled = False
    run(2)                                            # warm-up, untimed
    T.enabled = True
    T.reset()
    steps, plains, calls, rows = run(args.steps, bar=True)
    excl = dict(T.excl)
    total = sum(steps)
    by_cat = defaultdict(float)
    for k, v in excl.items():
        by_cat[CATEGORY[k]] += v
    by_cat["Python/other (outside every timer)"] = total - sum(excl.values())
    prof_rows = None
    if not args.no_torch_profiler:
        T.enabled = False
        from torch.profiler import ProfilerActivity, profile
        prof = profile(activities=[ProfilerActivity.CPU])
        run(2, ctx=prof, plain_too=False)
        T.enabled = True
        prof_rows = [(e.key, e.self_cpu_time_total / 1e3 / 2, e.count / 2)
                     for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top_ops]]
    cprof = None
    if args.cprofile:
        T.enabled = False
        pr = cProfile.Profile()
        run(2, ctx=pr, plain_too=False)
        T.enabled = True
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(20)
        cprof = s.getvalue()
    return dict(setting=name, batch=B, steps=len(steps), step_ms=total / len(steps) * 1e3,
                step_ms_median=C.median(steps) * 1e3, plain_forward_ms=C.median(plains) * 1e3,
                step_in_plain_forwards=C.median(steps) / C.median(plains),
                calls_per_step=calls / len(steps), rows_per_step=rows / len(steps),
                categories={k: v / len(steps) * 1e3 for k, v in by_cat.items()},
                timers={k: dict(ms_per_step=v / len(steps) * 1e3, calls_per_step=T.calls[k] / len(steps))
                        for k, v in excl.items()},
                torch_ops=prof_rows, cprofile=cprof)


@torch.no_grad()
def main(argv=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    p.add_argument("--settings", default="topk50,full", help="comma list of: " + ",".join(SETTINGS))
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--rollouts", type=int, default=2)
    p.add_argument("--block-size", type=int, default=None, help="default: the library's")
    p.add_argument("--top-ops", type=int, default=15)
    p.add_argument("--no-torch-profiler", action="store_true")
    p.add_argument("--scaling-rows", default="1,2,4,8,16,32,64,128",
                   help="rows of the model-call scaling table ('' to skip)")
    p.add_argument("--cprofile", action="store_true", help="also print the top Python functions (tottime)")
    p.add_argument("--no-prefetch", action="store_true", help="steps without prefetch (before / after comparisons)")
    p.add_argument("--torch-fork-attention", action="store_true",
                   help="run fork attention's torch path instead of the C++ op (before / after comparisons)")
    args = p.parse_args(argv)
    if args.torch_fork_attention:                     # in this process only
        A.fork_attention_backend = lambda device, dtype, backend=None: "reference"
    if args.quick:
        args.steps, args.top_ops = 3, 8
    if args.block_size is None:
        args.block_size = C.library_block_size()
    C.setup_torch(args.threads)
    model, tok, _ = C.load(args.model)
    seqs = C.chat_prompts(tok, args.data, args.batch)
    ids, mask = C.left_pad(seqs)
    if not bool(mask.all()):                          # keep the profile about the step: equal lengths
        T_min = int(mask.sum(-1).min())
        ids = torch.cat([s[:, -T_min:] for s in seqs])
    rows_list = [int(x) for x in args.scaling_rows.split(",") if x]
    if args.quick:
        rows_list = rows_list[:3]
    scaling = call_scaling(model, ids, rows_list, 3 if args.quick else 7) if rows_list else {}
    T = Timers()
    plain = plain_forward_fn(model, ids[:1])
    fast = instrument(model, T)
    results = [profile_setting(model, ids, k, args, T, fast, plain) for k in args.settings.split(",")]

    print(f"\n## profile_step: alpha {args.alpha}, horizon {args.horizon}, rollouts {args.rollouts}, block size "
          f"{args.block_size}, batch {args.batch}, git {C.git_revision()}, {args.steps} steps, {args.threads} threads, CPU only\n")
    cats = list(dict.fromkeys(c for r in results for c in r["categories"]))
    cats.sort(key=lambda c: -max(r["categories"].get(c, 0.0) for r in results))
    hdr = ["component"]
    for r in results:
        hdr += [f"{r['setting']} ms/step", "share"]
    rows = []
    for c in cats:
        row = [c]
        for r in results:
            v = r["categories"].get(c, 0.0)
            row += [v, f"{100 * v / r['step_ms']:.1f}%"]
        rows.append(row)
    tot = ["**step total**"]
    for r in results:
        tot += [r["step_ms"], "100%"]
    rows.append(tot)
    print(C.md_table(hdr, rows))
    print()
    print(C.md_table(["setting", "step ms (median)", "plain decode forward ms", "step / plain forward",
                      "model calls/step", "rows fed/step", "fork attn calls/step"],
                     [[r["setting"], r["step_ms_median"], r["plain_forward_ms"], r["step_in_plain_forwards"],
                       r["calls_per_step"], r["rows_per_step"],
                       r["timers"].get("fork_attention", {}).get("calls_per_step", 0.0)] for r in results]))
    if scaling:
        base = scaling[rows_list[0]]
        print(f"\n### one model call (HF cache, SDPA) against the rows it feeds\n")
        print(C.md_table(["rows", "ms per call", f"x {rows_list[0]}-row call", "ms per row"],
                         [[n, t, t / base, t / n] for n, t in scaling.items()]))
    for r in results:
        if r["torch_ops"]:
            print(f"\n### top aten ops, {r['setting']} (self CPU ms per step, torch.profiler, 2 steps)\n")
            print(C.md_table(["op", "self ms/step", "calls/step"], [list(x) for x in r["torch_ops"]]))
        if r["cprofile"]:
            print(f"\n### cProfile, {r['setting']} (2 steps)\n\n```\n{r['cprofile']}\n```")
    C.write_json(args.json, dict(machine=C.machine(), args=vars(args), results=results,
                                 call_scaling_ms={str(k): v for k, v in scaling.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
