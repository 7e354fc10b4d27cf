"""``epic-generate``: EPIC decoding of a prompt with the embedded SmolLM2-135M-Instruct (or any Hugging
Face directory / GGUF file): chat template, streamed text, a per-step table and a summary; optionally
the same prompt decoded with plain top-p sampling, and a plot of the per-step entropy trajectories
(``--plot`` needs matplotlib: ``pip install epic_kernels[plot]``). ``--engine vllm`` runs every model
call through an in-process vLLM engine, ``--server URL`` through a running ``vllm serve`` (both need
the vLLM environment: ``make setup-vllm``); ``--engine llama.cpp`` runs EPIC on llama.cpp (the
embedded GGUF, or ``--model FILE.gguf``: the library's engine on llama.cpp's quantized model, its
logits and KV forks; needs ``llama-cpp-python``, which ``make setup`` builds); ``--json FILE``
writes the tokens, text and per-step statistics of any engine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .. import defaults
from ..extras import MissingDependency, require
from . import args as types
from .calibrate import InputError, read_jsonl

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _alpha(text: str):
    """``--alpha``: a finite number, or ``auto``."""
    return "auto" if text == "auto" else types.finite_float(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epic-generate", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="user message (wrapped in the chat template)")
    p.add_argument("--model", default=None, type=types.model_path,
                   help="HF model directory or .gguf file (default: embedded SmolLM2)")
    p.add_argument("--max-new-tokens", type=types.int_in(0), default=48)
    p.add_argument("--alpha", type=_alpha, default=defaults.ALPHA,
                   help="entropy weight (0 = plain sampling), or 'auto' to read it from --calibration")
    p.add_argument("--calibration", default=None, type=types.existing_file,
                   help="JSON record written by epic-calibrate (for --alpha auto)")
    p.add_argument("--horizon", type=types.int_in(1), default=defaults.HORIZON, help="lookahead depth k")
    p.add_argument("--rollouts", type=types.int_in(1), default=defaults.ROLLOUTS,
                   help="rollouts K of the RB estimator")
    p.add_argument("--top-k", type=types.int_in(0), default=defaults.TOP_K,
                   help="candidate truncation before EPIC (0 = none)")
    p.add_argument("--rollout-top-k", type=types.int_in(0), default=defaults.ROLLOUT_TOP_K,
                   help="rollout policy truncation (0 = none)")
    p.add_argument("--block-size", type=types.int_in(1), default=defaults.BLOCK_SIZE,
                   help="candidates refined per sequence per round of the best-first search")
    p.add_argument("--seed", type=types.seed, default=0, help="sequence seed, in [0, 2**32)")
    p.add_argument("--baseline", choices=["top-p"], default=None,
                   help="also decode the prompt with plain top-p sampling (p=0.9), for comparison")
    p.add_argument("--plot", default=None, type=types.output_file(".png"), metavar="FILE.png",
                   help="plot the per-step entropy trajectories (needs matplotlib)")
    p.add_argument("--band-data", default=None, type=types.existing_file, metavar="FILE.jsonl",
                   help="held-out text for the plot's typical-entropy band (mean ± sd of the model's entropy)")
    p.add_argument("--band-field", default="question", help="JSON field of --band-data holding the text")
    p.add_argument("--threads", type=types.int_in(1), default=None,
                   help="torch intra-op threads (llama.cpp's threads with --engine llama.cpp)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--quiet-steps", action="store_true", help="do not print the per-step table")
    p.add_argument("--engine", choices=["auto", "hf", "vllm", "llama.cpp"], default="auto",
                   help="hf: the library's engine on transformers; vllm: every model call through vLLM "
                        "(in process; the embedded model is converted once to a safetensors folder); "
                        "llama.cpp: the library's engine on llama.cpp (a .gguf file, quantized as stored); "
                        "auto: llama.cpp for a .gguf model (the embedded one included) on a CPU-only machine "
                        "where it is installed and runs, unless --baseline or --band-data need transformers; "
                        "hf otherwise (the choice and its reason are printed)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="EPIC through a running OpenAI-compatible vLLM server at URL (implies --engine vllm)")
    p.add_argument("--refine", choices=["eager", "full", "adaptive"], default="eager",
                   help="vLLM engine: how deep each request goes (docs/vllm.md)")
    p.add_argument("--json", default=None, type=types.output_file(".json"), metavar="FILE",
                   help="write the generated token ids (tokens), the text and the per-step statistics")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check every argument (``--alpha auto`` reads its calibration record here): a bad one
    exits with code 2 and a one-line message before the model loads."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.alpha == "auto":
        try:
            args.alpha = _calibrated_alpha(args)
        except ValueError as err:
            parser.error(str(err))
    if args.band_data and not args.plot:
        parser.error("--band-data sets the band of --plot's figure: give --plot FILE.png too")
    args.band_texts = None
    if args.band_data:
        try:
            texts, _ = read_jsonl(args.band_data, args.band_field, limit=BAND_TEXTS)
        except InputError as err:
            parser.error(str(err))
        args.band_texts = [t for t in texts if t.strip()]
        if not args.band_texts:
            parser.error(f"--band-data {args.band_data!r}: field {args.band_field!r} holds only empty texts")
    types.check_epic_settings(parser, alpha=args.alpha, horizon=args.horizon, rollouts=args.rollouts,
                              rollout_top_k=args.rollout_top_k or None, block_size=args.block_size)
    if args.server:
        args.engine = "vllm"
    args.engine_reason = None
    if args.engine == "auto":
        args.engine, args.engine_reason = auto_engine(args)
    if args.engine == "vllm":
        for flag, value in (("--plot", args.plot), ("--baseline", args.baseline)):
            if value:
                parser.error(f"{flag} needs the model's full next-token distribution, which a serving engine does "
                             "not return: use --engine hf")
        if not args.top_k or not args.rollout_top_k:
            parser.error("--top-k 0 / --rollout-top-k 0 ask for full-vocabulary EPIC, which is out of scope on vLLM "
                         "(its logprobs return at most max_logprobs tokens per position)")
        if args.server and args.model:
            parser.error("--model picks the model of the in-process engine; a server serves its own")
        if args.model and str(args.model).endswith(".gguf"):
            parser.error("vLLM needs a Hugging Face model folder, not a .gguf file (the embedded model is "
                         "converted automatically when --model is not given)")
    if args.engine == "llama.cpp":
        if args.baseline or args.band_data:
            parser.error("--baseline and --band-data run the model through transformers: use --engine hf")
        if args.model and not str(args.model).endswith(".gguf"):
            parser.error("--engine llama.cpp needs a .gguf file (a Hugging Face folder runs on --engine hf)")
    types.check_plotting(parser, args.plot)
    return args


def auto_engine(args) -> tuple[str, str]:
    """``--engine auto``: ``(engine, why)``. llama.cpp where it runs the same job faster (a GGUF model
    on a CPU: docs/engine.md's benchmark), transformers where the job needs it or llama.cpp cannot run."""
    if args.baseline or args.band_data:
        return "hf", "--baseline and --band-data run the model through transformers"
    if args.model is not None and not str(args.model).endswith(".gguf"):
        return "hf", "the model is a Hugging Face folder"
    try:
        import torch
        if torch.cuda.is_available():
            return "hf", "a CUDA device is present and the llama.cpp build is CPU-only"
    except ImportError:
        pass
    from importlib.util import find_spec

    from ..llama.library import missing_cpu_flags
    if find_spec("llama_cpp") is None:
        return "hf", "llama-cpp-python is not installed (pip install 'epic_kernels[llama]' for the llama.cpp engine)"
    missing = missing_cpu_flags()
    if missing:
        return "hf", f"this CPU lacks {', '.join(missing)}, which the llama.cpp build needs"
    return "llama.cpp", "a GGUF model on a CPU: llama.cpp runs its quantized weights (docs/engine.md)"


def _calibrated_alpha(args) -> float:
    """alpha from ``--calibration``; warns when it was calibrated with other settings."""
    if not args.calibration:
        raise ValueError("--alpha auto needs --calibration FILE (written by epic-calibrate)")
    try:
        with open(args.calibration) as f:
            record = json.load(f)
        alpha = types.finite_float(str(record["alpha"]))
        settings = record.get("settings") or {}
    except (KeyError, ValueError, TypeError, AttributeError, argparse.ArgumentTypeError):
        raise ValueError(f"{args.calibration!r} is not a calibration record (no finite numeric 'alpha')") from None
    for key in ("horizon", "rollouts", "top_k", "rollout_top_k"):
        ours = getattr(args, key) or None
        if key in settings and (settings[key] or None) != ours:
            print(f"epic-generate: warning: alpha was calibrated with {key}={settings[key]}, decoding uses "
                  f"{key}={ours}; the calibrated value holds for the calibration's settings", file=sys.stderr)
    return alpha


BAND_TEXTS = 20       # held-out texts of the band (the first 256 tokens of each)


def _band(model, tokenizer, texts):
    """Mean and sd of the model's next-token entropy over held-out texts (the typical band)."""
    import torch

    from ..reference import softmax_entropy

    values = []
    for text in texts:
        if len(values) >= 4000:
            break
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
        with torch.no_grad():
            h, _ = softmax_entropy(model(input_ids=ids).logits[0])
        values += h.tolist()
    t = torch.tensor(values)
    return float(t.mean()), float(t.std())


def _plot(path, runs, band):
    matplotlib = require("matplotlib", "plot", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    if band is not None:
        mean, sd = band
        ax.axhspan(max(mean - sd, 0), mean + sd, color="tab:green", alpha=0.15,
                   label=f"typical band (held-out text: {mean:.2f} ± {sd:.2f} nats)")
        ax.axhline(mean, color="tab:green", lw=1, ls="--")
    for (label, values), color in zip(runs, ["tab:blue", "tab:orange", "tab:red"]):
        ax.plot(range(len(values)), values, lw=0.8, color=color, alpha=0.35)
        window = min(8, max(len(values), 1))
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                  for i in range(len(values))]
        ax.plot(range(len(values)), smooth, lw=2, color=color,
                label=f"{label}: {window}-token moving average (mean {sum(values) / max(len(values), 1):.2f})")
    ax.set_xlabel("generated token")
    ax.set_ylabel("next-token entropy H(q) [nats]")
    ax.set_title("Per-step entropy of the model's next-token distribution")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.engine_reason:
        print(f"[epic-generate] engine {args.engine} (--engine auto: {args.engine_reason}; "
              f"--engine hf|llama.cpp|vllm to choose)", file=sys.stderr)
    try:
        if args.engine == "llama.cpp":
            return _generate_llama(args)
        return _generate_vllm(args) if args.engine == "vllm" else _generate(args)
    except (ValueError, OSError, MissingDependency) as err:
        print(f"epic-generate: error: {err}", file=sys.stderr)
        return 2


def _settings(args) -> str:
    """The EPIC settings of a run, as the load line prints them."""
    return (f"alpha={args.alpha} horizon={args.horizon} rollouts={args.rollouts} top_k={args.top_k or None} "
            f"rollout_top_k={args.rollout_top_k or None}")


def _printer(tokenizer):
    """An ``on_step`` callback that prints the first sequence's new text as it comes."""
    printed, tokens = [""], []

    def stream(step, rows, new):
        tokens.append(int(new[0]))
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        sys.stdout.write(text[len(printed[0]):])
        sys.stdout.flush()
        printed[0] = text
    return stream


def _generate(args) -> int:
    import torch

    from ..generation import generate
    from ..models import chat_prompt_ids, eos_ids, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    alpha = args.alpha
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    print(f"[epic-generate] loaded {args.model or 'embedded SmolLM2-135M-Instruct'} in "
          f"{time.perf_counter() - started:.1f}s; {_settings(args)}", file=sys.stderr)
    ids = chat_prompt_ids(tokenizer, args.prompt, not args.no_chat_template)
    stream = _printer(tokenizer)

    print("--- EPIC ---")
    out = generate(model, ids, max_new_tokens=args.max_new_tokens, alpha=alpha, horizon=args.horizon,
                   rollouts=args.rollouts, seed=args.seed, eos_token_id=eos_ids(model, tokenizer),
                   top_k=args.top_k or None, rollout_top_k=args.rollout_top_k or None,
                   block_size=args.block_size, on_step=stream)
    print()
    if not args.quiet_steps:
        print("\nstep  token           H(q)  survivors  depth1  deeper  calls  fwd_tokens  saved    ms")
        for i, (tok, h, rec) in enumerate(zip(out.new_tokens[0], out.entropies[0], out.steps)):
            piece = repr(tokenizer.decode([tok]))[:14]
            print(f"{i:4d}  {piece:14s} {h:5.2f}  {rec.survivors:9.0f}  {rec.evaluated_depth1:6.0f}  "
                  f"{rec.evaluated_deeper:6.0f}  {rec.forward_calls:5d}  {rec.forward_tokens:10d}  "
                  f"{rec.forwards_saved:5d}  {rec.seconds * 1e3:5.0f}")
    s = out.summary()
    print(f"\n[summary] {s['tokens']} tokens in {s['seconds']:.1f}s = {s['tokens_per_second']:.2f} tokens/s; "
          f"mean survivors {s['mean_survivors']:.1f}, candidates evaluated per step: {s['mean_evaluated_depth1']:.1f} "
          f"at depth 1 and {s['mean_evaluated_deeper']:.1f} deeper; {s['forward_calls_per_token']:.2f} forward "
          f"calls and {s['forward_tokens_per_token']:.1f} forward tokens per token; "
          f"{s['forwards_saved']} forwards saved by reusing the winner's; {s['prefetched']} candidates "
          f"evaluated ahead inside the previous step's calls (prefetch) and {s['reused']} taken from the "
          f"previous winner's rollouts (reuse)")
    if args.json:
        _write_json(args.json, dict(engine="hf", tokens=out.new_tokens[0],
                                    text=tokenizer.decode(out.new_tokens[0], skip_special_tokens=True),
                                    summary=s, steps=[dict(rec.__dict__, entropy=h)
                                                      for rec, h in zip(out.steps, out.entropies[0])]))
    runs = [("EPIC", out.entropies[0])]
    if args.baseline:
        runs.append(("top-p 0.9", _top_p(model, tokenizer, ids, args)))
    if args.plot:
        band = _band(model, tokenizer, args.band_texts) if args.band_texts else None
        _plot(args.plot, runs, band)
        print(f"[plot] wrote {args.plot}")
    return 0


def _generate_llama(args) -> int:
    """The same decode on llama.cpp (``epic_kernels.llama``): the GGUF's own quantized weights."""
    from ..llama import LlamaModel, generate
    from ..models import chat_prompt_ids, embedded_model_path, gguf_tokenizer

    started = time.perf_counter()
    model = LlamaModel(args.model)
    tokenizer = gguf_tokenizer(args.model or embedded_model_path())
    print(f"[epic-generate] llama.cpp loaded {model.path.name} in {time.perf_counter() - started:.1f}s; "
          f"{_settings(args)}", file=sys.stderr)
    ids = chat_prompt_ids(tokenizer, args.prompt, not args.no_chat_template)
    stream = _printer(tokenizer)

    print("--- EPIC (llama.cpp) ---")
    out = generate(model, ids, max_new_tokens=args.max_new_tokens, alpha=args.alpha, horizon=args.horizon,
                   rollouts=args.rollouts, seed=args.seed, top_k=args.top_k or None,
                   rollout_top_k=args.rollout_top_k or None, block_size=args.block_size, threads=args.threads,
                   tokenizer=tokenizer, on_step=stream)
    print()
    s = out.summary()
    if not args.quiet_steps:
        print("\nstep  token           H(q)  survivors  depth1  deeper  calls  rows  saved    ms")
        for i, (tok, h, rec) in enumerate(zip(out.new_tokens[0], out.entropies[0], out.steps)):
            piece = repr(tokenizer.decode([tok]))[:14]
            print(f"{i:4d}  {piece:14s} {h:5.2f}  {rec.survivors:9.0f}  {rec.evaluated_depth1:6.0f}  "
                  f"{rec.evaluated_deeper:6.0f}  {rec.forward_calls:5d}  {rec.forward_tokens:4d}  "
                  f"{rec.forwards_saved:5d}  {rec.seconds * 1e3:5.0f}")
    print(f"\n[summary] {s['tokens']} tokens in {s['seconds']:.1f}s = {s['tokens_per_second']:.2f} tokens/s; "
          f"mean survivors {s['mean_survivors']:.1f}; {s['forward_calls_per_token']:.2f} llama_decode calls and "
          f"{s['forward_tokens_per_token']:.1f} rows per token")
    if args.json:
        _write_json(args.json, dict(engine="llama.cpp", model=str(model.path), tokens=out.new_tokens[0],
                                    text=tokenizer.decode(out.new_tokens[0], skip_special_tokens=True), summary=s,
                                    steps=[dict(rec.__dict__, entropy=h)
                                           for rec, h in zip(out.steps, out.entropies[0])]))
    if args.plot:
        _plot(args.plot, [("EPIC (llama.cpp)", out.entropies[0])], None)
        print(f"[plot] wrote {args.plot}")
    return 0


def _write_json(path, record) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"[json] wrote {path}", file=sys.stderr)


def _generate_vllm(args) -> int:
    """The same decode with every model call through vLLM: in process, or a server at ``--server``."""
    import importlib.util
    import os

    from ..extras import check_installed

    # a spec without an origin is a namespace package (a folder named vllm on the path), not vLLM
    if not args.server and getattr(importlib.util.find_spec("vllm"), "origin", None) is None:
        raise MissingDependency("epic-generate --engine vllm needs vllm, which is not installed here: run it in the "
                                "vLLM environment (make setup-vllm; make run ARGS='--engine vllm', or "
                                ".venv-vllm/bin/python -m epic_kernels.cli.generate --engine vllm); "
                                "elsewhere pip install 'epic_kernels[vllm]'")
    check_installed("openai", extra="vllm", purpose="epic-generate --engine vllm / --server")
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from ..serving import EpicServingDecoder, ServerTransport, ServingError
    from ..serving.offline import OfflineTransport

    started = time.perf_counter()
    try:
        if args.server:
            transport, where = ServerTransport(args.server), args.server
        else:
            from ..models import embedded_hf_dir

            path = args.model or embedded_hf_dir()
            transport, where = OfflineTransport.start(path), f"vLLM in process on {path}"
        try:
            dec = EpicServingDecoder(transport, alpha=args.alpha, horizon=args.horizon, rollouts=args.rollouts,
                                     top_k=args.top_k, rollout_top_k=args.rollout_top_k,
                                     block_size=args.block_size, refine=args.refine)
            print(f"[epic-generate] {where} ready in {time.perf_counter() - started:.1f}s; alpha={args.alpha} "
                  f"horizon={args.horizon} rollouts={args.rollouts} top_k={args.top_k} "
                  f"rollout_top_k={args.rollout_top_k} refine={args.refine}", file=sys.stderr)
            tokenizer = transport.info.tokenizer
            from ..models import chat_prompt_ids

            ids = chat_prompt_ids(tokenizer, args.prompt, not args.no_chat_template)[0].tolist()
            print("--- EPIC (vLLM) ---")
            out = dec.generate([ids], max_new_tokens=args.max_new_tokens, seed=args.seed)
        finally:
            transport.close()
    except ServingError as err:
        raise ValueError(str(err)) from None
    print(out.texts[0])
    steps = out.steps[0]
    if not args.quiet_steps:
        print("\nstep  token           survivors  evaluated  rounds  requests  vllm_tokens  entropy")
        for i, rec in enumerate(steps):
            piece = repr(tokenizer.decode([rec.token]))[:14]
            print(f"{i:4d}  {piece:14s} {rec.survivors:9d}  {rec.evaluated:9d}  {rec.rounds:6d}  {rec.requests:8d}  "
                  f"{rec.generated:11d}  {rec.entropy:7.3f}")
    s = out.summary()
    print(f"\n[summary] {s['tokens']} tokens in {s['seconds']:.1f}s = {s['tokens_per_second']:.2f} tokens/s; "
          f"mean survivors {s['mean_survivors']:.1f}; per token: {s['rounds_per_token']:.2f} engine rounds, "
          f"{s['requests_per_token']:.1f} requests, {s['generated_per_token']:.1f} tokens generated by vLLM; "
          f"{s['engine_seconds']:.1f}s inside vLLM; finish: {out.finish_reasons[0]}")
    if args.json:
        _write_json(args.json, dict(engine="vllm", server=args.server, tokens=out.new_tokens[0], text=out.texts[0],
                                    finish_reason=out.finish_reasons[0], summary=s,
                                    steps=[{k: v for k, v in r.__dict__.items() if k != "trace"} for r in steps]))
    return 0


def _top_p(model, tokenizer, ids, args):
    """Decode the same prompt with Hugging Face top-p sampling; print it and return its entropies."""
    import torch

    from ..models import eos_ids
    from ..reference import softmax_entropy

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, top_k=0,
                         max_new_tokens=args.max_new_tokens, output_scores=True, output_logits=True,
                         return_dict_in_generate=True, eos_token_id=eos_ids(model, tokenizer),
                         pad_token_id=tokenizer.pad_token_id or 0)
    seconds = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    print(f"\n--- top-p 0.9 (plain sampling) ---\n{tokenizer.decode(new, skip_special_tokens=True)}")
    print(f"[summary] {len(new)} tokens in {seconds:.1f}s = {len(new) / seconds:.2f} tokens/s")
    return [float(softmax_entropy(step)[0][0]) for step in out.logits]


if __name__ == "__main__":
    sys.exit(main())
