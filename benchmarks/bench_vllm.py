"""EPIC on vLLM against vLLM's own top-p sampling and the library's HF-based EPIC, in one run.

Runs in the vLLM environment (``.venv-vllm``, ``make setup-vllm``): one in-process ``vllm.LLM`` on the
embedded SmolLM2 (float32, converted once to safetensors), its top-p 0.9 sampling as the baseline, the
same engine driven by ``epic_kernels.serving`` (EPIC), and ``epic_kernels.generate`` on the same weights
under transformers (HF EPIC), all with the same GSM8K prompts, seeds and settings (alpha 0.2, horizon 4,
2 rollouts, top-50 candidates and rollout policy). Every run produces exactly ``--new-tokens`` tokens per
prompt (no EOS), timed end to end (prefill included). Batch 1 runs the prompts one at a time; batch B
runs them B at a time. The methods are interleaved per chunk of prompts (A B C A B C ...), and ratios
are of the summed seconds of one run.

Also: ``--policies`` compares the refinement policies at one batch (rounds, requests and tokens per
emitted token, seconds); ``--scaling 32`` repeats the batch run at batch 32 (vLLM methods only).

    .venv-vllm/bin/python benchmarks/bench_vllm.py --json out/bench_vllm.json
    .venv-vllm/bin/python benchmarks/bench_vllm.py --quick

A script, not a suite: it runs in the vLLM environment (``.venv-vllm``, another transformers), one
long-lived ``vllm.LLM`` whose start-up alone takes minutes, outside the suites' environment.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")            # vLLM drops to 1 thread unless this is set
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

from epic_kernels.serving.offline import engine_environment  # noqa: E402

engine_environment()

import torch  # noqa: E402

EPIC = dict(alpha=0.2, horizon=4, rollouts=2, top_k=50, rollout_top_k=50)


def vllm_topp(transport, prompts, n, seed):
    from vllm import SamplingParams

    sp = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, top_p=0.9, seed=seed + b,
                         detokenize=False) for b in range(len(prompts))]
    (outs, secs) = C.timed(lambda: transport.llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                           use_tqdm=False))
    assert all(len(o.outputs[0].token_ids) == n for o in outs)
    return secs, None


def vllm_epic(transport, prompts, n, seed, refine="eager", eager_max=8):
    from epic_kernels.serving import EpicServingDecoder

    dec = EpicServingDecoder(transport, refine=refine, eager_max=eager_max, probe=False, **EPIC)
    out, secs = C.timed(lambda: dec.generate(prompts, max_new_tokens=n, seed=seed, eos_token_id=None, progress=False))
    assert all(len(t) == n for t in out.new_tokens)
    return secs, out.summary()


def hf_epic(model, prompts, n, seed):
    import epic_kernels

    ids, mask = C.left_pad(prompts)
    out, secs = C.timed(lambda: epic_kernels.generate(model, ids, attention_mask=mask, max_new_tokens=n, seed=seed,
                                                      eos_token_id=None, **EPIC))
    assert all(len(t) == n for t in out.new_tokens)
    return secs, out.summary()


def run_batch(methods, prompts, batch, n, seed):
    """Per method: summed seconds over chunks of ``batch`` prompts, and the summaries, interleaved."""
    res = {name: dict(seconds=0.0, summaries=[]) for name in methods}
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo:lo + batch]
        for name, fn in methods.items():
            secs, summary = fn(chunk, n, seed + lo)
            res[name]["seconds"] += secs
            if summary:
                res[name]["summaries"].append((len(chunk), summary))
            print(f"[bench_vllm] batch {batch} prompts {lo}-{lo + len(chunk) - 1} {name}: {secs:.1f}s",
                  file=sys.stderr, flush=True)
    for name, r in res.items():
        r["tok_s"] = len(prompts) * n / r["seconds"]
        if r["summaries"]:
            w = sum(b for b, _ in r["summaries"])
            keys = r["summaries"][0][1].keys()
            r["summary"] = {k: sum(b * s[k] for b, s in r["summaries"]) / w for k in keys
                            if isinstance(r["summaries"][0][1][k], (int, float))}
        del r["summaries"]
    return res


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per prompt and run")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--scaling", type=int, default=32, help="also the batch run at this batch size (0: skip)")
    p.add_argument("--policies", default="eager,eager32,full,adaptive",
                   help="refinement policies compared at --policy-batch ('' to skip); eagerN: eager_max=N")
    p.add_argument("--policy-batch", type=int, default=8)
    p.add_argument("--policy-tokens", type=int, default=16)
    p.add_argument("--no-hf", action="store_true", help="skip the HF-based EPIC")
    args = p.parse_args(argv)
    if args.quick:
        args.new_tokens, args.prompts, args.batches, args.scaling = 4, 2, "1,2", 0
        args.policies, args.policy_batch, args.policy_tokens = "eager,adaptive", 2, 3
    C.setup_torch(None)
    torch.set_grad_enabled(False)
    from epic_kernels.models import embedded_hf_dir, load_model
    from epic_kernels.serving import OfflineTransport

    hf_dir = embedded_hf_dir()
    transport, start_s = C.timed(lambda: OfflineTransport.start(hf_dir, max_model_len=2048))
    print(f"[bench_vllm] engine started in {start_s:.0f}s", file=sys.stderr)
    tok = transport.info.tokenizer
    prompts = C.prompt_ids(tok, C.load_prompts(args.data, max(args.prompts, args.scaling)))
    model = None if args.no_hf else load_model(hf_dir)[0]
    n, seed = args.new_tokens, args.seed
    methods = {"vLLM top-p": lambda ps, n, s: vllm_topp(transport, ps, n, s),
               "EPIC on vLLM": lambda ps, n, s: vllm_epic(transport, ps, n, s)}
    if model is not None:
        methods["HF EPIC"] = lambda ps, n, s: hf_epic(model, ps, n, s)
    vllm_topp(transport, prompts[:2], 4, 0)                       # warm-up of every path
    vllm_epic(transport, prompts[:2], 2, 0)
    if model is not None:
        hf_epic(model, prompts[:1], 2, 0)
    results = {}
    for b in [int(x) for x in args.batches.split(",")]:
        results[b] = run_batch(methods, prompts[:args.prompts], b, n, seed)
    if args.scaling:
        vl = {k: v for k, v in methods.items() if k != "HF EPIC"}
        results[args.scaling] = run_batch(vl, prompts[:args.scaling], args.scaling, n, seed)
    policies = {}
    for pol in [x for x in args.policies.split(",") if x]:
        mode, eager_max = (pol, 8) if not pol.startswith("eager") or pol == "eager" else ("eager", int(pol[5:]))
        ps = prompts[:args.policy_batch]
        secs, s = vllm_epic(transport, ps, args.policy_tokens, seed, mode, eager_max)
        policies[pol] = dict(s, seconds=secs, tok_s=len(ps) * args.policy_tokens / secs)
        print(f"[bench_vllm] policy {pol}: {secs:.1f}s", file=sys.stderr, flush=True)

    print(f"\n## bench_vllm: alpha 0.2, horizon 4, 2 rollouts, top-50; {n} tokens per prompt, {args.prompts} prompts "
          f"(batch {args.scaling}: {args.scaling}); OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, git {C.git_revision()}, "
          f"load {C.loadavg()}\n")
    rows = []
    for b, res in results.items():
        tp, ep = res["vLLM top-p"], res["EPIC on vLLM"]
        hf = res.get("HF EPIC")
        s = ep["summary"]
        rows.append([b, tp["tok_s"], ep["tok_s"], ep["tok_s"] / tp["tok_s"], hf["tok_s"] if hf else None,
                     ep["tok_s"] / hf["tok_s"] if hf else None, s["rounds_per_token"], s["batch_rounds_per_token"],
                     s["requests_per_token"], s["generated_per_token"], s["cached_fraction"],
                     s["library_seconds"] / (s["engine_seconds"] + s["library_seconds"]),
                     hf["summary"]["forward_calls_per_token"] if hf else None,
                     hf["summary"]["forward_tokens_per_token"] if hf else None])
    print(C.md_table(["batch", "vLLM top-p tok/s", "EPIC on vLLM tok/s", "EPIC vLLM / top-p", "HF EPIC tok/s",
                      "EPIC vLLM / HF EPIC", "rounds/token (per seq)", "batch rounds/token", "requests/token",
                      "vLLM tokens/token", "prompt tokens cached", "library share of time", "HF calls/token",
                      "HF rows/token"], rows))
    if policies:
        print(f"\nRefinement policies, batch {args.policy_batch}, {args.policy_tokens} tokens per prompt:\n")
        print(C.md_table(["policy", "tok/s", "rounds/token", "requests/token", "vLLM tokens/token", "seconds"],
                         [[k, v["tok_s"], v["rounds_per_token"], v["requests_per_token"], v["generated_per_token"],
                           v["seconds"]] for k, v in policies.items()]))
    C.write_json(args.json, dict(machine=C.machine(), args=vars(args), engine_start_seconds=start_s,
                                 results={str(b): r for b, r in results.items()}, policies=policies))
    transport.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
