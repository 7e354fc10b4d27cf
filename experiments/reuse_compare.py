#!/usr/bin/env python
"""Cross-step reuse on and off on the evidence run's EPIC alpha* pass (docs/results.md section 2,
docs/engine.md "Where the tokens can differ from the reference").

The evidence prompts (48 GSM8K questions from line 500, one batch of 48, seed 0, alpha 0.2729, the engine's
defaults otherwise), decoded by ``experiments.common.epic_generate`` as ``exp_evidence.py`` does:

    python experiments/reuse_compare.py --dtype float32 --tokens 256 --reuse off --texts-from OLD.json NEW.json
        # reuse off: compares the continuations with the EPIC alpha* texts of each JSON (548 s here)
    python experiments/reuse_compare.py --dtype float64 --tokens 64 --reuse both
        # reuse on and off: the same tokens? (2 x ~7 min here; before the max_rows fix they were not)
    python experiments/reuse_compare.py --max-rows none --reuse on --texts-from experiments/results/evidence.json
        # uncapped: the EPIC alpha* texts of the committed evidence run (decoded with the default cap, 256)?

``OLD.json`` was the previous evidence JSON: ``git show 1c1f38d:experiments/results/evidence.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import common as ev  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)
from experiments.exp_evidence import RESULTS, eval_prompts  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--reuse", choices=["on", "off", "both"], default="both")
    p.add_argument("--max-rows", default="256", help="the engine's max_rows ('none': uncapped)")
    p.add_argument("--texts-from", nargs="*", default=[], metavar="JSON",
                   help="evidence JSONs whose EPIC alpha* texts the continuations are compared with")
    args = p.parse_args(argv)
    max_rows = None if args.max_rows.lower() == "none" else int(args.max_rows)

    import torch

    from epic_kernels.models import eos_ids, load_model

    ev.setup_torch(None)
    model, tok = load_model(dtype=getattr(torch, args.dtype))
    eos = eos_ids(model, tok)
    prompts, alpha = eval_prompts(tok, 48), ev.read_alpha(RESULTS)
    outs = {}
    for reuse in {"on": [True], "off": [False], "both": [True, False]}[args.reuse]:
        outs[reuse], stats = ev.epic_generate(model, prompts, alpha, max_new_tokens=args.tokens, seed=0, eos=eos,
                                              batch_size=48, pad_id=tok.pad_token_id or 0, reuse=reuse,
                                              max_rows=max_rows)
        print(f"{args.dtype} reuse={reuse}: {stats['seconds']:.0f}s, {stats['reused']} reused", flush=True)
    if len(outs) == 2:
        differ = [i for i, (a, b) in enumerate(zip(outs[True], outs[False])) if a != b]
        print(f"reuse on == off: {48 - len(differ)} of 48 continuations; differing prompts {differ}")
    for path in args.texts_from:
        rec = next(r for r in ev.read_json(path)["results"] if r["method"] == ev.epic(alpha).name)
        for reuse, toks in outs.items():
            texts = [tok.decode(t, skip_special_tokens=True) for t in toks]
            differ = [i for i, (a, b) in enumerate(zip(texts, rec["texts"])) if a != b]
            print(f"reuse={reuse} == {path}: {48 - len(differ)} of 48 texts; differing prompts {differ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
