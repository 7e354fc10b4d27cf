"""``epic-serve`` under concurrent clients against ``epic_kernels.generate`` in process.

The embedded model, the library's EPIC defaults (alpha 0.2, horizon 4, 2 rollouts, top-50), chat
prompts of two kinds (writing, GSM8K questions) with fixed seeds, every request running to exactly
``--tokens`` tokens (``ignore_eos``; in process: no EOS id), so both sides make the same tokens.

* **server, c clients** (c = 1, 4, 16): the prompts spread over c client threads, each sending its
  requests one after another, streamed; throughput = tokens / wall time of the whole run; time to
  first token (TTFT) = request sent -> first streamed token; per-token latency = (last token - first
  token) / (tokens - 1) per request.
* **in process, batch 1**: ``generate`` on each prompt alone; **batch 16**: all prompts in one
  ``generate`` (left padded). TTFT = start -> first step's callback (prefill and first step).

The server runs in its own process (``--threads`` torch threads, as the in-process side); the two
never run at once. One *pair* = (server with 16 clients, in process batch 16), repeated
``--pairs`` times, interleaved: the ratio "server / in process" is their median, every pair shown.
The 1- and 4-client runs and batch 1 run once, over the first ``--solo-prompts`` prompts (a
2-core CPU decodes one sequence at a few tokens per second).

    python benchmarks/bench_serve.py --json benchmarks/results/bench_serve.json    # ~25 min on 2 cores
    python benchmarks/bench_serve.py --quick                                        # smoke run
    python benchmarks/bench_serve.py --from-json benchmarks/results/bench_serve.json   # the table again
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)


import epic_kernels  # noqa: E402

WRITING = ["Write a short story about a lighthouse keeper.", "Describe your favourite city in detail.",
           "Write a letter to a friend about a trip to the mountains.", "Explain to a child how a bicycle works.",
           "Write a poem about the sea at night.", "Describe a day in the life of a baker.",
           "Write a dialogue between a cat and a dog.", "Explain why the sky is blue."]
NAME = "smollm2-135m-instruct"


def prompts(tok, n: int, data=C.DEFAULT_DATA) -> list[list[int]]:
    """``n`` chat prompts alternating writing / GSM8K."""
    from epic_kernels.models import chat_prompt_ids

    gsm = C.load_prompts(data, n)
    out = []
    for i in range(n):
        text = WRITING[i // 2 % len(WRITING)] if i % 2 == 0 else gsm[i // 2]
        out.append(chat_prompt_ids(tok, text)[0].tolist())
    return out


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else None


def summary(tokens: int, wall: float, ttft: list, per_token: list) -> dict:
    return dict(tokens=tokens, seconds=wall, tokens_per_second=tokens / wall, ttft_p50=percentile(ttft, 50),
                ttft_p99=percentile(ttft, 99), per_token_p50=percentile(per_token, 50),
                per_token_p99=percentile(per_token, 99))


class Server:
    def __init__(self, threads: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        self.proc = subprocess.Popen([sys.executable, "-m", "epic_kernels.service.cli", "--port", str(self.port),
                                      "--threads", str(threads), "--max-running", "16", "--max-queue", "64",
                                      "--max-tokens", "4096"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import httpx

        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("epic-serve did not start")
            time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def run_server(server, ps, seeds, tokens: int, clients: int) -> dict:
    import httpx

    def one(i):
        body = dict(model=NAME, prompt=ps[i], max_tokens=tokens, seed=seeds[i], ignore_eos=True, stream=True,
                    stream_options={"include_usage": True})
        sent = time.perf_counter()
        first = last = None
        n = 0
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=3600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    n = obj["usage"]["completion_tokens"]
                elif obj.get("choices"):
                    last = time.perf_counter()
                    first = first or last
        assert n == tokens, (i, n)
        return first - sent, (last - first) / max(n - 1, 1)

    def client(c):
        return [one(i) for i in range(c, len(ps), clients)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        got = [x for part in pool.map(client, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    return summary(tokens * len(ps), wall, [g[0] for g in got], [g[1] for g in got])


def run_inproc(model, ps, seeds, tokens: int, batch: int) -> dict:
    ttft, per_token, total = [], [], 0
    t0 = time.perf_counter()
    for lo in range(0, len(ps), batch):
        group = ps[lo:lo + batch]
        ids, mask = C.left_pad(group)
        stamps = []
        start = time.perf_counter()
        epic_kernels.generate(model, ids, attention_mask=mask, max_new_tokens=tokens, seed=seeds[lo:lo + batch],
                              on_step=lambda step, rows, toks: stamps.append(time.perf_counter()))
        ttft += [stamps[0] - start] * len(group)
        per_token += [(stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)] * len(group)
        total += tokens * len(group)
    return summary(total, time.perf_counter() - t0, ttft, per_token)


def table(out: dict) -> str:
    """The markdown table of a run (docs/benchmarks.md)."""
    def row(name, r):
        f = lambda x: "" if x is None else f"{x:.2f}"
        return (f"| {name} | {r['tokens']} | {r['tokens_per_second']:.2f} | {f(r['ttft_p50'])} / {f(r['ttft_p99'])} | "
                f"{f(r['per_token_p50'] and r['per_token_p50'] * 1000)} / {f(r['per_token_p99'] and r['per_token_p99'] * 1000)} |")
    lines = ["| run | tokens | tokens/s | TTFT p50 / p99 (s) | per-token p50 / p99 (ms) |", "|---|---|---|---|---|"]
    n = out["prompts"]
    for i, pr in enumerate(out["pairs"]):
        lines.append(row(f"server, {min(16, n)} clients (pair {i + 1})", pr["server"]))
        lines.append(row(f"in process, batch {n} (pair {i + 1})", pr["inproc"]))
    runs = out["runs"]
    lines.append(row("server, 4 clients", runs["server_4"]))
    lines.append(row("server, 1 client", runs["server_1"]))
    lines.append(row("in process, batch 1", runs["inproc_1"]))
    ratios = ", ".join(f"{pr['ratio']:.3f}" for pr in out["pairs"])
    lines.append("")
    lines.append(f"Server with {min(16, n)} clients / in process batch {n}: **{out['ratio_median']:.3f}x** "
                 f"(median of pairs {ratios}).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = C.base_parser(__doc__, "4 prompts x 8 tokens, one pair")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--solo-prompts", type=int, default=4)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--from-json", default=None, metavar="FILE", help="no run: the table of a --json output")
    args = p.parse_args(argv)
    if args.from_json:
        print(table(C.read_json(args.from_json)))
        return 0
    if args.quick:
        args.tokens, args.prompts, args.solo_prompts, args.pairs = 8, 4, 2, 1
    threads = args.threads or 2
    C.setup_torch(threads)
    model, tok, _ = C.load(args.model)
    ps = prompts(tok, args.prompts, args.data)
    seeds = list(range(100, 100 + len(ps)))
    out = dict(command="python benchmarks/bench_serve.py " + " ".join(argv or sys.argv[1:]), machine=C.machine(),
               threads=threads, tokens=args.tokens, prompts=len(ps), pairs=[], runs={})
    print(f"load average at start {C.loadavg()}", file=sys.stderr)
    server = Server(threads)
    try:
        run_server(server, ps[:1], seeds, 2, 1)                      # warm-up (first-call costs)
        for r in range(args.pairs):
            srv = run_server(server, ps, seeds, args.tokens, min(16, len(ps)))
            inp = run_inproc(model, ps, seeds, args.tokens, len(ps))
            out["pairs"].append(dict(server=srv, inproc=inp, ratio=srv["tokens_per_second"] / inp["tokens_per_second"]))
            print(f"pair {r}: server {srv['tokens_per_second']:.2f} tok/s, in process {inp['tokens_per_second']:.2f} "
                  f"tok/s, ratio {out['pairs'][-1]['ratio']:.3f}", file=sys.stderr)
        solo = ps[:args.solo_prompts]
        for c in (1, 4):
            out["runs"][f"server_{c}"] = run_server(server, solo if c == 1 else ps, seeds, args.tokens, c)
            print(f"server {c} clients: {out['runs'][f'server_{c}']['tokens_per_second']:.2f} tok/s", file=sys.stderr)
        out["runs"]["inproc_1"] = run_inproc(model, solo, seeds, args.tokens, 1)
    finally:
        server.stop()
    out["ratio_median"] = C.median([pr["ratio"] for pr in out["pairs"]])
    out["loadavg_end"] = C.loadavg()
    print(table(out))
    if args.json:
        C.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
