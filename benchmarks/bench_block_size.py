"""Model calls and forward tokens per generated token against the manager's block size.

The tokens do not depend on the block size (exactness), so every setting decodes the same text and
the counts compare like with like. Counts are deterministic; the tokens/s column is noisy.

    python benchmarks/bench_block_size.py --tokens 40 [--full-vocab]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from epic_kernels import generate  # noqa: E402
from epic_kernels.models import chat_prompt_ids, load_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--full-vocab", action="store_true")
    p.add_argument("--blocks", default="1,4,16,32,1000")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, tok = load_model()
    ids = chat_prompt_ids(tok, "Write a short story about a lighthouse keeper who finds a message in a bottle.")
    k = None if args.full_vocab else 50
    print("| block size | calls / token | forward tokens / token | mean survivors | tokens/s (noisy) |")
    print("|---|---|---|---|---|")
    first = None
    for block in [int(b) for b in args.blocks.split(",")]:
        out = generate(model, ids, max_new_tokens=args.tokens, top_k=k, rollout_top_k=k, block_size=block)
        s = out.summary()
        first = first or out.new_tokens
        assert out.new_tokens == first, "the block size changed the tokens"
        print(f"| {block} | {s['forward_calls_per_token']:.2f} | {s['forward_tokens_per_token']:.1f} | "
              f"{s['mean_survivors']:.1f} | {s['tokens_per_second']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
