"""Command-line tools. ``epic-generate``: EPIC decoding of a prompt with the embedded SmolLM2-135M-Instruct
(or any Hugging Face directory / GGUF file), streamed, with per-step statistics and a summary."""
from __future__ import annotations

import argparse
import sys
import time

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epic-generate", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="user message (wrapped in the chat template)")
    p.add_argument("--model", default=None, help="HF model directory or .gguf file (default: embedded SmolLM2)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--alpha", type=float, default=0.2, help="entropy weight (0 = plain sampling)")
    p.add_argument("--horizon", type=int, default=4, help="lookahead depth k")
    p.add_argument("--rollouts", type=int, default=2, help="rollouts K of the RB estimator")
    p.add_argument("--top-k", type=int, default=50, help="candidate truncation before EPIC (0 = none)")
    p.add_argument("--rollout-top-k", type=int, default=50, help="rollout policy truncation (0 = none)")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--quiet-steps", action="store_true", help="do not print the per-step table")
    return p


def generate_main(argv=None) -> int:
    args = _generate_parser().parse_args(argv)
    import torch

    from .generation import generate
    from .models import chat_prompt_ids, eos_ids, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for name in ("max_new_tokens", "horizon", "rollouts", "top_k", "rollout_top_k"):
            if getattr(args, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        started = time.perf_counter()
        model, tokenizer = load_model(args.model)
        print(f"[epic-generate] loaded {args.model or 'embedded SmolLM2-135M-Instruct'} in "
              f"{time.perf_counter() - started:.1f}s; alpha={args.alpha} horizon={args.horizon} "
              f"rollouts={args.rollouts} top_k={args.top_k or None} rollout_top_k={args.rollout_top_k or None}",
              file=sys.stderr)
        ids = chat_prompt_ids(tokenizer, args.prompt, not args.no_chat_template)
        printed = [""]
        tokens: list[int] = []

        def stream(step, rows, new):
            tokens.append(int(new[0]))
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            sys.stdout.write(text[len(printed[0]):])
            sys.stdout.flush()
            printed[0] = text

        out = generate(model, ids, max_new_tokens=args.max_new_tokens, alpha=args.alpha,
                       horizon=args.horizon, rollouts=args.rollouts, seed=args.seed,
                       eos_token_id=eos_ids(model, tokenizer), top_k=args.top_k or None,
                       rollout_top_k=args.rollout_top_k or None, block_size=args.block_size,
                       on_step=stream)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"epic-generate: error: {err}", file=sys.stderr)
        return 2
    print()
    if not args.quiet_steps:
        print("\nstep  token           H(q)  survivors  depth1  deeper  calls  fwd_tokens  ms")
        for i, (tok, h, rec) in enumerate(zip(out.new_tokens[0], out.entropies[0], out.steps)):
            piece = repr(tokenizer.decode([tok]))[:14]
            print(f"{i:4d}  {piece:14s} {h:5.2f}  {rec.survivors:9.0f}  {rec.evaluated_depth1:6.0f}  "
                  f"{rec.evaluated_deeper:6.0f}  {rec.forward_calls:5d}  {rec.forward_tokens:10d}  "
                  f"{rec.seconds * 1e3:5.0f}")
    s = out.summary()
    print(f"\n[summary] {s['tokens']} tokens in {s['seconds']:.1f}s = {s['tokens_per_second']:.2f} tokens/s; "
          f"mean survivors {s['mean_survivors']:.1f}, evaluated at depth 1 {s['mean_evaluated_depth1']:.1f} "
          f"and deeper {s['mean_evaluated_deeper']:.1f} per step; {s['forward_calls_per_token']:.2f} forward "
          f"calls and {s['forward_tokens_per_token']:.1f} forward tokens per token; "
          f"{s['forwards_saved']} forwards saved")
    return 0


if __name__ == "__main__":
    sys.exit(generate_main())
