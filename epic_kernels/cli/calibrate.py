"""``epic-calibrate``: find EPIC's alpha* on held-out text (paper Appendix B.1) and write it as JSON.

    epic-calibrate --data test.jsonl --field answer --context-field question --out alpha.json

Each line of the JSONL file is one record; ``--field`` names the text to score. With
``--context-field`` each text is scored as the model's reply to that field's prompt (wrapped in the
chat template, as ``epic-generate`` does), which is what calibrating a chat model for decoding
needs; without it the texts are scored as plain text. The JSON record holds ``alpha`` (the key
``epic-generate --alpha auto --calibration FILE`` reads), everything ``CalibrationResult`` reports
and the settings used. Exit codes: 0 success, 1 no alpha could be calibrated, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .. import defaults
from . import args as types

PROG = "epic-calibrate"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="held-out data, one JSON object per line")
    p.add_argument("--field", required=True, metavar="NAME", help="the record field holding the text to score")
    p.add_argument("--context-field", default=None, metavar="NAME",
                   help="optional field holding each text's prompt (not scored; chat-template wrapped)")
    p.add_argument("--strip", default=None, metavar="REGEX", type=types.regex,
                   help="remove every match of this regular expression from the texts first "
                        "(e.g. GSM8K's calculator annotations: '<<[^>]*>>')")
    p.add_argument("--model", default=None, type=types.model_path,
                   help="HF model directory or .gguf file (default: embedded SmolLM2)")
    p.add_argument("--max-texts", type=types.int_in(1), default=None, metavar="N", help="use at most N texts")
    p.add_argument("--max-tokens", type=types.int_in(0), default=2000, metavar="N",
                   help="score at most N held-out tokens (0 = all)")
    p.add_argument("--horizon", type=types.int_in(1), default=defaults.HORIZON,
                   help="lookahead depth k (decode with the same)")
    p.add_argument("--rollouts", type=types.int_in(1), default=defaults.ROLLOUTS,
                   help="rollouts K of the RB estimator")
    p.add_argument("--samples", type=types.int_in(1), default=8, help="model samples per prefix for importance sampling")
    p.add_argument("--top-k", type=types.int_in(0), default=defaults.TOP_K,
                   help="candidate truncation of q before sampling, as decoded with (0 = none)")
    p.add_argument("--rollout-top-k", type=types.int_in(0), default=defaults.ROLLOUT_TOP_K,
                   help="rollout policy truncation (0 = none)")
    p.add_argument("--tol", type=types.positive_float, default=1e-3, help="bisection stops at this bracket width")
    p.add_argument("--bracket", type=types.finite_float, nargs=2, default=(-2.0, 2.0), metavar=("LO", "HI"),
                   help="initial bisection bracket (widened with a warning if needed)")
    p.add_argument("--seed", type=types.seed, default=0, help="keys all randomness (text i uses seed + i)")
    p.add_argument("--threads", type=types.int_in(1), default=None, help="torch intra-op threads")
    p.add_argument("--no-chat-template", action="store_true", help="with --context-field: plain concatenation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, metavar="FILE.json", type=types.output_file(),
                   help="write the calibration record here")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check every argument: a bad one exits with code 2 and a one-line message, before the
    data is read and the model loads."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.bracket[0] < args.bracket[1]:
        parser.error(f"--bracket must have LO < HI, got {args.bracket[0]} {args.bracket[1]}")
    types.check_epic_settings(parser, horizon=args.horizon, rollouts=args.rollouts,
                              rollout_top_k=args.rollout_top_k or None)
    return args


class InputError(ValueError):
    """Bad command-line input: reported in one line, exit code 2."""


def read_jsonl(path: str, field: str, context_field: str | None = None, limit: int | None = None):
    """``(texts, contexts or None)`` from a JSONL file; raises ``InputError`` with the line at fault."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {path!r} not found")
    texts, contexts = [], []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            for name in (field, context_field):
                if name is None:
                    continue
                if name not in rec:
                    keys = ", ".join(sorted(map(str, rec))) or "none"
                    raise InputError(f"{path}:{n}: no field {name!r} (fields: {keys})")
                if not isinstance(rec[name], str):
                    raise InputError(f"{path}:{n}: field {name!r} is {type(rec[name]).__name__}, not a string")
            texts.append(rec[field])
            if context_field is not None:
                contexts.append(rec[context_field])
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise InputError(f"data file {path!r} holds no records")
    return texts, (contexts if context_field is not None else None)


def _finite(obj):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        texts, contexts = read_jsonl(args.data, args.field, args.context_field, args.max_texts)
        if args.strip is not None:
            texts = [re.sub(args.strip, "", t) for t in texts]
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    import warnings

    import torch

    from .. import models
    from ..calibration import CalibrationError, calibrate_alpha, chat_pairs
    from ..extras import MissingDependency

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        model, tokenizer = models.load_model(args.model)
    except (OSError, ValueError, MissingDependency) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - started
    print(f"[{PROG}] loaded {args.model or 'embedded SmolLM2-135M-Instruct'} in {load_seconds:.1f}s; "
          f"{len(texts)} texts from {args.data}", file=sys.stderr)
    eos = models.eos_ids(model, tokenizer)
    if contexts is not None:
        contexts, texts = chat_pairs(tokenizer, contexts, texts, eos_token_id=eos[0] if eos else None,
                                     use_template=not args.no_chat_template)
    settings = dict(data=str(args.data), field=args.field, context_field=args.context_field, strip=args.strip,
                    model=args.model or "embedded:SmolLM2-135M-Instruct", max_texts=args.max_texts,
                    max_tokens=args.max_tokens or None, horizon=args.horizon, rollouts=args.rollouts,
                    samples=args.samples, top_k=args.top_k or None, rollout_top_k=args.rollout_top_k or None,
                    tol=args.tol, bracket=list(args.bracket), seed=args.seed,
                    chat_template=contexts is not None and not args.no_chat_template, threads=torch.get_num_threads())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda msg, *a, **k: print(f"{PROG}: warning: {msg}", file=sys.stderr)
            res = calibrate_alpha(model, texts, contexts=contexts, tokenizer=tokenizer, horizon=args.horizon,
                                  rollouts=args.rollouts, samples=args.samples, top_k=args.top_k or None,
                                  rollout_top_k=args.rollout_top_k or None, tol=args.tol, bracket=args.bracket,
                                  max_tokens=args.max_tokens or None, seed=args.seed,
                                  progress=not args.no_progress)
    except CalibrationError as err:
        print(f"{PROG}: calibration failed: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"alpha* = {res.alpha:.4f}  (approx. std. error {res.alpha_stderr:.3f}; bracket "
          f"[{res.bracket[0]:.4f}, {res.bracket[1]:.4f}], tol {res.tol:g})")
    print(f"mu_p = {res.mu_p:.4f}  mu_alpha(alpha*) = {res.mu_alpha:.4f}  mu_alpha(0) = {res.mu_q:.4f}  "
          f"[nats of {args.horizon}-step lookahead entropy]")
    print(f"{res.tokens} tokens of {res.texts} texts, {res.samples} samples per prefix, {res.evaluations} "
          f"lookahead entropies in {res.seconds:.0f}s; importance weights: mean ESS {res.ess_mean:.2f} "
          f"({res.ess_fraction:.0%}), min {res.ess_min:.2f}")
    if args.out:
        record = dict(res.to_dict(), settings=settings, load_seconds=load_seconds,
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            with open(args.out, "w") as f:
                json.dump(_finite(record), f, indent=2)
        except OSError as err:
            print(f"{PROG}: error: cannot write {args.out!r}: {err}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
