"""EPIC on llama.cpp against EPIC on transformers (the HF engine), same settings and prompts.

Each measurement is a child process (its own thread policy and peak memory) that decodes the 8
prompts (chat template, the embedded SmolLM2 GGUF) for ``--tokens`` tokens each, at batch 1 (one prompt
at a time) or batch 8 (all at once); rounds alternate the engines, and the ratio of a round is
llama.cpp's tokens/s over the HF engine's in that round (medians of interleaved pairs). Also:
plain top-p decoding (p = 0.9) on the same llama.cpp build (one llama_decode per token, the sampling
in torch), EPIC's rows per token, the peak resident memory of each child, and where llama.cpp's EPIC
time goes (llama_decode, copying the logits out, the library's own work).

Thread policies: each engine 2 threads; transformers with ``OMP_WAIT_POLICY=PASSIVE`` (what the
library's benchmarks set), llama.cpp with OpenMP's default (active) wait unless ``--llama-omp passive``.

    python benchmarks/bench_llama.py [--tokens 128] [--rounds 3] [--batch 1 8] [--json out.json]

Run it on a quiet machine (``cat /proc/loadavg`` first; it prints the load before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a rainbow forms.",
           "Give three tips for learning a language.", "What is the capital of Australia?",
           "Describe your favourite meal.", "Write a haiku about autumn.", "How do vaccines work?",
           "Summarise the plot of Hamlet."]


def child(args) -> dict:
    """One measurement in this process: decode every prompt with one engine at one batch size."""
    import resource

    import torch

    from epic_kernels.models import chat_prompt_ids, embedded_model_path, gguf_tokenizer

    torch.set_num_threads(args.threads)
    tok = gguf_tokenizer(embedded_model_path())
    prompts = [chat_prompt_ids(tok, p)[0].tolist() for p in PROMPTS[:args.prompts]]
    groups = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch)]
    kw = dict(max_new_tokens=args.tokens, alpha=args.alpha, seed=0)
    if args.engine == "hf":
        import epic_kernels
        from epic_kernels.models import load_model

        model, _ = load_model(None)
        run = lambda ids, mask: epic_kernels.generate(model, ids, attention_mask=mask, **kw)  # noqa: E731
    else:
        from epic_kernels.llama import LlamaModel
        from epic_kernels.llama import generate as llama_generate

        model = LlamaModel(None)
        rts = []
        run = lambda ids, mask: llama_generate(model, ids, attention_mask=mask, threads=args.threads,  # noqa: E731
                                               eos_token_id=None, runtime_out=rts, **kw)
    tokens = seconds = rows = 0
    decode = copy = 0.0
    for g in groups:
        T = max(len(p) for p in g)
        ids = torch.tensor([[0] * (T - len(p)) + p for p in g])
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in g])
        if args.engine == "top-p":
            t0 = time.perf_counter()
            n = top_p_decode(model, g, args)
            seconds += time.perf_counter() - t0
            tokens += n
            continue
        if args.engine == "hf":
            kw["eos_token_id"] = None
        t0 = time.perf_counter()
        out = run(ids, mask)
        seconds += time.perf_counter() - t0
        tokens += sum(len(t) for t in out.new_tokens)
        rows += sum(s.forward_tokens for s in out.steps)
        if args.engine == "llama.cpp":
            rt = rts.pop()
            decode, copy = decode + rt.decode_seconds, copy + rt.copy_seconds
            rt.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(engine=args.engine, batch=args.batch, tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds,
                rows_per_token=rows / max(tokens, 1), peak_rss_mb=peak, llama_decode_s=decode, logits_copy_s=copy,
                library_s=seconds - decode - copy if args.engine == "llama.cpp" else None)


def top_p_decode(model, group, args) -> int:
    """Plain top-p (0.9) sampling on llama.cpp: one llama_decode per token for the whole batch."""
    import torch

    from epic_kernels.llama import LlamaRuntime

    B = len(group)
    rt = LlamaRuntime(model, B, sum(len(p) for p in group) + B * (args.tokens + 1) + 256, threads=args.threads)
    logits = rt.prefill(group)
    gen = torch.Generator().manual_seed(0)
    for step in range(args.tokens):
        probs = torch.softmax(logits, -1)
        sorted_p, idx = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < 0.9
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = idx.gather(1, torch.multinomial(sorted_p, 1, generator=gen)).view(-1)
        rt._fill([(int(t), len(rt.texts[b]), b, True) for b, t in enumerate(pick.tolist())])  # each prefix grows
        rt._decode("a plain decoding step")
        logits = rt._logits(B)
        for b, t in enumerate(pick.tolist()):
            rt.texts[b].append(int(t))
    rt.close()
    return B * args.tokens


def measure(engine: str, batch: int, args) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if engine == "hf" or args.llama_omp == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, "--batch-size", str(batch),
           "--tokens", str(args.tokens), "--prompts", str(args.prompts), "--threads", str(args.threads),
           "--alpha", str(args.alpha)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--llama-omp", choices=["active", "passive"], default="active")
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=["hf", "llama.cpp", "top-p"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.engine, args.batch = args.child, args.batch_size
        print(json.dumps(child(args)))
        return 0
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average before: {' '.join(load)}; command: {' '.join(sys.argv)}")
    results = {}
    for batch in args.batch:
        runs = {"hf": [], "llama.cpp": [], "top-p": []}
        for r in range(args.rounds):
            for engine in ("hf", "llama.cpp", "top-p"):
                runs[engine].append(measure(engine, batch, args))
            pair = runs["llama.cpp"][-1]["tokens_per_second"] / runs["hf"][-1]["tokens_per_second"]
            print(f"batch {batch} round {r}: hf {runs['hf'][-1]['tokens_per_second']:.2f} tok/s, llama.cpp "
                  f"{runs['llama.cpp'][-1]['tokens_per_second']:.2f} tok/s ({pair:.2f}x), llama.cpp top-p "
                  f"{runs['top-p'][-1]['tokens_per_second']:.2f} tok/s")
        med = lambda xs: statistics.median(xs)  # noqa: E731
        ratio = med([l["tokens_per_second"] / h["tokens_per_second"] for l, h in zip(runs["llama.cpp"], runs["hf"])])
        vs_top_p = med([l["tokens_per_second"] / t["tokens_per_second"] for l, t in zip(runs["llama.cpp"], runs["top-p"])])
        last = runs["llama.cpp"][-1]
        summary = dict(ratio_llama_over_hf=ratio, ratio_llama_over_top_p=vs_top_p,
                       hf_tokens_per_second=med([h["tokens_per_second"] for h in runs["hf"]]),
                       llama_tokens_per_second=med([l["tokens_per_second"] for l in runs["llama.cpp"]]),
                       top_p_tokens_per_second=med([t["tokens_per_second"] for t in runs["top-p"]]),
                       llama_rows_per_token=last["rows_per_token"], hf_rows_per_token=runs["hf"][-1]["rows_per_token"],
                       llama_peak_rss_mb=max(l["peak_rss_mb"] for l in runs["llama.cpp"]),
                       hf_peak_rss_mb=max(h["peak_rss_mb"] for h in runs["hf"]),
                       llama_split_s=dict(llama_decode=last["llama_decode_s"], logits_copy=last["logits_copy_s"],
                                          library=last["library_s"]))
        results[batch] = dict(summary=summary, runs=runs)
        print(f"batch {batch}: llama.cpp / HF EPIC {ratio:.2f}x (median of {args.rounds} pairs); llama.cpp EPIC / "
              f"llama.cpp top-p {vs_top_p:.3f}x; rows per token {summary['llama_rows_per_token']:.1f}; peak RSS "
              f"llama.cpp {summary['llama_peak_rss_mb']:.0f} MB, HF {summary['hf_peak_rss_mb']:.0f} MB; llama.cpp "
              f"time: llama_decode {last['llama_decode_s']:.1f}s, logits copy {last['logits_copy_s']:.2f}s, library "
              f"{last['library_s']:.1f}s")
    load_after = open("/proc/loadavg").read().split()[:3]
    print(f"load average after: {' '.join(load_after)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(load_before=load, load_after=load_after, argv=sys.argv, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
