"""The one helper module of the repository's scripts: the model benchmarks (``benchmarks/*.py``) and
the evidence experiments (``experiments/exp_*.py``). Application code, not part of the library.

Shared by both: passive OpenMP waiting (set on import, before torch loads), arguments, the
embedded model, GSM8K data (``experiments/data/gsm8k``, in the repository), left padding, timing,
the machine record, markdown tables and JSON output. For the experiments: baseline decoding
through Hugging Face ``generate``, EPIC decoding through ``epic_kernels.generate``, teacher-forced
scoring of any continuation under the model (per-token entropy and negative log-likelihood),
diversity metrics, plots and the scripts' shared ``main``.

Every benchmark reports RATIOS against a baseline measured in the same run: the machines are shared
and noisy, so absolute times move by 2x between runs while ratios of interleaved repeats do not.

Every experiment measures generations the same way: after decoding (by whatever method), the prompt
plus the generated tokens run through the model once, and at each generated position we record
the entropy ``H(q(. | prefix))`` of the model's full, untruncated next-token distribution and
``-log q(y_t | prefix)``. Methods therefore differ only in which tokens they chose.

Scripts import it as ``from experiments import common`` after putting the repository root on
``sys.path`` (so ``python benchmarks/x.py`` and ``python experiments/x.py`` run without PYTHONPATH).
Optional dependencies (``pip install epic_kernels[experiments]``): matplotlib for plots, sacrebleu
for Self-BLEU; both are imported only where used.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Import this module BEFORE torch. On these shared 2-core machines OpenMP's default active spin-wait
# makes every 2-thread parallel op wait for a descheduled partner thread whenever other engineers'
# jobs run: measured 100-400x slower small ops (fork attention 0.3 ms -> 108 ms, a 22 MiB deepcopy
# 3 ms -> 590 ms). Passive waiting removes that. It must be set before libgomp loads; export
# OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from epic_kernels import defaults  # noqa: E402  (imports torch: after the line above)
from epic_kernels.extras import require  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# GSM8K test slice (MIT licence, github.com/openai/grade-school-math): experiments/data/gsm8k/README.md
DEFAULT_DATA = REPO_ROOT / "experiments" / "data" / "gsm8k" / "test.jsonl"
DEFAULT_ALPHA = 0.25    # between the alpha* measured on GSM8K answers (0.21, 0.27: docs/results.md); override it


# ------------------------------------------------------------------------------------------------ #
# arguments, set-up, the model
# ------------------------------------------------------------------------------------------------ #
def base_parser(doc: str, quick_help: str = "short smoke run (a few steps)",
                json_help: str = "also write the results as JSON") -> argparse.ArgumentParser:
    """The flags every script shares: --quick, --json, --data, --model, --seed, --threads, --no-progress.
    The description is ``doc``'s first paragraph."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", default=None, metavar="FILE", help=json_help)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K jsonl (prompts: the `question` field)")
    p.add_argument("--model", default=None, help="HF directory or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--seed", type=int, default=0, help="EPIC per-sequence seed (sequence b uses seed + b)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def experiment_parser(doc: str, quick_help: str, json_help: str | None = None) -> argparse.ArgumentParser:
    """``base_parser`` plus what every experiment script takes (its own options are added by the script)."""
    p = base_parser(doc, quick_help, json_help)
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--from-json", default=None, metavar="FILE", help="no run: table and plot from a --json output")
    return p


_LOAD_AT_START = None


def loadavg():
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def setup_torch(threads: int | None = None) -> None:
    """Thread count (if given), no network, and the load average at the start (for ``machine()``)."""
    global _LOAD_AT_START
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    _LOAD_AT_START = loadavg()
    if threads:
        torch.set_num_threads(threads)


def load(model_path=None):
    """``(model, tokenizer, seconds)``: the embedded SmolLM2 unless a path is given. Progress bars of
    the GGUF conversion are silenced."""
    import transformers

    from epic_kernels.models import load_model

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:                                          # the GGUF conversion bar ignores the switch above
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from tqdm import tqdm

        gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    except (ImportError, AttributeError):
        pass
    t0 = time.perf_counter()
    model, tok = load_model(model_path)
    return model, tok, time.perf_counter() - t0


def prepare(args, model=None, tok=None):
    """Thread settings, the model (loaded unless given) and its end-of-sequence ids, for a script's run."""
    from epic_kernels.models import eos_ids

    setup_torch(args.threads)
    if model is None:
        model, tok, load_s = load(args.model)
        print(f"loaded the model in {load_s:.0f}s", file=sys.stderr)
    return model, tok, eos_ids(model, tok)


# ------------------------------------------------------------------------------------------------ #
# data
# ------------------------------------------------------------------------------------------------ #
def clean_answer(text: str) -> str:
    """GSM8K answers without the calculator annotations ``<<48/2=24>>`` (not natural text)."""
    return re.sub(r"<<[^>]*>>", "", text)


def load_gsm8k(path, n: int, start: int = 0) -> list[dict]:
    """``n`` records ``{question, answer}`` (answer cleaned) from line ``start`` on."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"data file {p} not found (give --data; see experiments/data/gsm8k/README.md)")
    out = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start or not line.strip():
                continue
            rec = json.loads(line)
            out.append(dict(question=rec["question"], answer=clean_answer(rec["answer"])))
            if len(out) == n:
                break
    if len(out) < n:
        raise SystemExit(f"{p} holds only {len(out)} records from line {start}, {n} needed")
    return out


def load_prompts(path, n: int, start: int = 0) -> list[str]:
    """The ``question`` field of ``n`` GSM8K problems, from line ``start`` on."""
    return [r["question"] for r in load_gsm8k(path, n, start)]


def chat_prompts(tokenizer, path, n: int, start: int = 0) -> list:
    """Token ids ``[1, T]`` of ``n`` GSM8K questions from line ``start`` on, in the chat template."""
    from epic_kernels.models import chat_prompt_ids

    return [chat_prompt_ids(tokenizer, q) for q in load_prompts(path, n, start)]


def prompt_ids(tokenizer, questions) -> list[list[int]]:
    """Each question wrapped in the chat template, as a list of token ids."""
    from epic_kernels.models import chat_prompt_ids

    return [chat_prompt_ids(tokenizer, q)[0].tolist() for q in questions]


def left_pad(seqs, pad_id: int = 0):
    """Left-pad sequences (lists of ids, or id tensors ``[T]`` / ``[1, T]``) into ``(ids [B, T], mask [B, T])``."""
    import torch

    rows = [torch.as_tensor(s, dtype=torch.int64).flatten() for s in seqs]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), T), dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = r
        mask[b, T - len(r):] = 1
    return ids, mask


def cut_at_eos(tokens: list[int], eos) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


# ------------------------------------------------------------------------------------------------ #
# timing
# ------------------------------------------------------------------------------------------------ #
def progress_bar(iterable=None, disable: bool = False, **kw):
    """A tqdm progress bar on stderr (over ``iterable``, or with ``total=`` and ``update``)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, **kw)


def timed(fn):
    """``(result, seconds)`` of one call."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def std_error(xs) -> float:
    """Standard error of the mean of ``xs`` (NaNs left out); NaN with fewer than 2 values."""
    xs = [x for x in xs if x == x]
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5


def bootstrap_indices(n: int, reps: int = 2000, seed: int = 0):
    """``[reps, n]`` prompt indices drawn with replacement (numpy). The same ``(n, reps, seed)`` gives
    the same draws, so statistics of different decoders on the same prompts are paired."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def interval(draws, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``draws`` (NaNs left out)."""
    import numpy as np

    d = np.asarray(draws, dtype=float)
    d = d[~np.isnan(d)]
    if not len(d):
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def ratio_draws(num, den, idx):
    """Bootstrap draws of ``sum(num) / sum(den)`` over resampled prompts ``idx`` (a token-weighted
    mean when ``num`` are per-prompt sums and ``den`` per-prompt token counts)."""
    import numpy as np

    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num[idx].sum(1) / den[idx].sum(1)


def mean_draws(values, idx):
    """Bootstrap draws of the mean of per-prompt ``values`` (NaN prompts left out of each draw)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    ok = ~np.isnan(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, v, 0.0)[idx].sum(1) / ok[idx].sum(1)


def final_number(text: str) -> str | None:
    """The final number of a GSM8K-style solution: the one after ``####`` if there is one, else the
    last number in the text; commas, a trailing ``.`` and ``.0...`` removed (``"1,200.00"`` -> ``"1200"``)."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    if not nums:
        return None
    x = nums[-1 if "####" not in text else 0].replace(",", "")
    if "." in x:
        x = x.rstrip("0").rstrip(".")
    return x


def hf_topp(model, ids, mask, new_tokens: int, seed: int = 0, top_p: float = 0.9):
    """One ``model.generate(do_sample=True, top_p=0.9)`` run of exactly ``new_tokens`` tokens per row
    (``min_new_tokens`` forces the length, so EOS cannot make it cheaper); returns seconds.
    ``top_k=0`` turns off the top-k 50 that HF would otherwise add to plain top-p."""
    import torch

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=mask, do_sample=True, top_p=top_p, top_k=0, temperature=1.0,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return time.perf_counter() - t0


def library_block_size() -> int:
    """``sample_step``'s default ``block_size`` (the library's measured default)."""
    import inspect

    import epic_kernels

    return inspect.signature(epic_kernels.sample_step).parameters["block_size"].default


# ------------------------------------------------------------------------------------------------ #
# decoding methods
# ------------------------------------------------------------------------------------------------ #
@dataclass(frozen=True)
class Method:
    name: str                       # e.g. "top-p 0.9"
    family: str                     # "top-p", "top-k", "min-p", "typical", "eta", "temperature", "EPIC"
    hf: dict | None = None          # model.generate sampling options; None for EPIC
    alpha: float | None = None      # EPIC's alpha


def baseline(family: str, value: float) -> Method:
    """HF ``generate`` options of a baseline. HF's default top-k 50 is switched off (top_k=0) unless
    the method is top-k, so each baseline is exactly the named truncation at temperature 1. ``eta``
    is eta-sampling (Hewitt et al., 2022; HF's ``eta_cutoff``)."""
    opts = {"top-p": dict(top_p=value, top_k=0), "top-k": dict(top_k=int(value)),
            "min-p": dict(min_p=value, top_k=0), "typical": dict(typical_p=value, top_k=0),
            "eta": dict(eta_cutoff=value, top_k=0),
            "temperature": dict(temperature=value, top_k=0)}[family]
    opts.setdefault("temperature", 1.0)
    v = int(value) if family == "top-k" else value
    return Method(f"{family} {v}", family, opts)


def epic(alpha: float) -> Method:
    return Method(f"EPIC a={alpha:.3g}", "EPIC", None, float(alpha))


def hf_generate(model, prompts: list[list[int]], method: Method, *, max_new_tokens: int, seed: int, eos,
                batch_size: int = 16, pad_id: int = 0, measure: bool = False):
    """Sample continuations with ``model.generate(do_sample=True, **method.hf)``; cut after EOS.
    ``measure=True``: ``(continuations, [Scored])``, the entropy of the model's full distribution and
    ``-log q`` of each chosen token recorded while decoding (what ``score`` computes by teacher
    forcing afterwards, without its second pass over prompt and continuation)."""
    import torch

    out, scored = [], []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s:s + batch_size], pad_id)
        torch.manual_seed(seed + s)
        rec = _StepMeasure() if measure else None
        gen = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=max_new_tokens,
                             pad_token_id=pad_id, eos_token_id=list(eos), **method.hf,
                             **(dict(logits_processor=[rec]) if measure else {}))
        new = gen[:, ids.shape[1]:]
        rows = [cut_at_eos(row.tolist(), set(eos)) for row in new]
        out += rows
        if measure:
            ent, nll = rec.finish(new)
            scored += [Scored(ent[b, :len(r)].tolist(), nll[b, :len(r)].tolist()) for b, r in enumerate(rows)]
    return (out, scored) if measure else out


class _StepMeasure:
    """A logits processor that changes nothing and records, per step, the entropy of the full
    distribution it is given (HF passes custom processors the raw logits, before the sampling warpers)
    and the log-probabilities, so that ``-log q`` of the token chosen at the step can be read at the next."""

    def __init__(self):
        self.entropy, self.nll, self.logp = [], [], None

    def __call__(self, input_ids, scores):
        import torch

        if self.logp is not None:
            self.nll.append(-self.logp.gather(1, input_ids[:, -1:]).flatten())
        self.logp = torch.log_softmax(scores.to(torch.float64), -1)
        self.entropy.append(-(self.logp.exp() * self.logp).sum(-1))
        return scores

    def finish(self, new_tokens):
        """``(entropy [B, T], nll [B, T])`` for the generated tokens ``new_tokens [B, T]``."""
        import torch

        T = new_tokens.shape[1]
        if len(self.nll) < T:
            self.nll.append(-self.logp.gather(1, new_tokens[:, len(self.nll):len(self.nll) + 1]).flatten())
        return torch.stack(self.entropy[:T], 1), torch.stack(self.nll[:T], 1)


def epic_generate(model, prompts: list[list[int]], alpha: float, *, max_new_tokens: int, seed: int, eos,
                  batch_size: int = 16, pad_id: int = 0, horizon: int = defaults.HORIZON,
                  rollouts: int = defaults.ROLLOUTS, top_k: int = defaults.TOP_K,
                  rollout_top_k: int = defaults.ROLLOUT_TOP_K, progress: bool = True, desc: str = "EPIC",
                  **engine_kw):
    """EPIC continuations (``epic_kernels.generate``, the engine's defaults unless ``engine_kw`` sets
    ``reuse``, ``prefetch``, ``max_rows``, ...) and decode statistics."""
    from epic_kernels.generation import generate

    out, stats = [], []
    bar = progress_bar(total=len(prompts) * max_new_tokens, disable=not progress, desc=desc, unit="tok")
    try:
        for s in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[s:s + batch_size], pad_id)
            done = [0]

            def step(_, rows, __, done=done):
                bar.update(len(rows))
                done[0] += len(rows)
            res = generate(model, ids, attention_mask=mask, max_new_tokens=max_new_tokens, alpha=alpha,
                           horizon=horizon, rollouts=rollouts, seed=seed + s, eos_token_id=list(eos),
                           pad_token_id=pad_id, top_k=top_k, rollout_top_k=rollout_top_k, on_step=step,
                           **engine_kw)
            bar.update(len(ids) * max_new_tokens - done[0])     # sequences that ended early
            out += [list(t) for t in res.new_tokens]
            stats.append(res.summary())
    finally:
        bar.close()
    tokens = sum(x["tokens"] for x in stats)
    seconds = sum(x["seconds"] for x in stats)
    return out, dict(tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds if seconds else 0.0,
                     mean_survivors=sum(x["mean_survivors"] * x["tokens"] for x in stats) / max(tokens, 1),
                     reused=sum(x["reused"] for x in stats))


# ------------------------------------------------------------------------------------------------ #
# measuring continuations
# ------------------------------------------------------------------------------------------------ #
@dataclass
class Scored:
    """Per-token measurements of one continuation under the model (untruncated, temperature 1)."""

    entropy: list[float] = field(default_factory=list)     # H(q(. | prefix)) at each position
    nll: list[float] = field(default_factory=list)         # -log q(y_t | prefix)


def score(model, prompts: list[list[int]], continuations: list[list[int]]) -> list[Scored]:
    """Teacher-forced entropy and NLL at every continuation position (one forward per sequence;
    only the continuation's logits are materialised)."""
    import torch

    out = []
    with torch.no_grad():
        for p, c in zip(prompts, continuations):
            if not c:
                out.append(Scored())
                continue
            ids = torch.tensor([p + c])
            logits = model(input_ids=ids, logits_to_keep=len(c) + 1).logits[0, :-1].to(torch.float64)
            logp = torch.log_softmax(logits, -1)
            ent = -(logp.exp() * logp).sum(-1)
            nll = -logp.gather(1, torch.tensor(c).view(-1, 1)).flatten()
            out.append(Scored(ent.tolist(), nll.tolist()))
    return out


def mean_of(scored: list[Scored], attr: str) -> float:
    """Token-weighted mean over all sequences."""
    vals = [v for s in scored for v in getattr(s, attr)]
    return sum(vals) / len(vals) if vals else float("nan")


def per_sequence(scored: list[Scored], attr: str) -> list[float]:
    return [sum(getattr(s, attr)) / len(getattr(s, attr)) if getattr(s, attr) else float("nan") for s in scored]


# ------------------------------------------------------------------------------------------------ #
# diversity
# ------------------------------------------------------------------------------------------------ #
def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams in ``texts`` (Li et al., 2016), word level."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: list[str]) -> float:
    """Self-BLEU (Zhu et al., 2018): mean sentence BLEU (sacrebleu, effective order) of each text
    against all the others as references; 0-100, lower = more diverse."""
    BLEU = require("sacrebleu.metrics", "experiments", "Self-BLEU").BLEU

    if len(texts) < 2:
        return float("nan")
    bleu = BLEU(effective_order=True)
    return sum(bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)) / len(texts)


def decode(model, prompts: list[list[int]], method: Method, args, eos, pad_id: int, **epic_kw):
    """``(continuations, EPIC statistics or None)`` of ``method`` on ``prompts``: Hugging Face
    ``generate`` for a baseline, ``epic_generate`` for EPIC (``epic_kw``: its horizon, rollouts, ...)."""
    common = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, eos=eos, batch_size=args.batch_size,
                  pad_id=pad_id)
    if method.hf is not None:
        return hf_generate(model, prompts, method, **common), None
    return epic_generate(model, prompts, method.alpha, progress=not args.no_progress, **common, **epic_kw)


# ------------------------------------------------------------------------------------------------ #
# output
# ------------------------------------------------------------------------------------------------ #
def fmt(x, digits: int | None = None) -> str:
    """A table cell. Floats: ``digits`` decimals, or by default 3 significant figures below 10
    (2 decimals from 0.1), 1 decimal below 100, none above; NaN as ``n/a``."""
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if digits is not None:
            return f"{x:.{digits}f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.3g}" if abs(x) < 0.1 else f"{x:.2f}"
    return "" if x is None else str(x)


def md_table(headers: list[str], rows: list[list], digits: int | None = None) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(x, digits) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path, payload: dict, indent: int | None = 2) -> None:
    """``payload`` as JSON (``indent=None``: one line, for records holding per-token arrays)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=indent, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"wrote {path}", file=sys.stderr)


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_alpha(path) -> float:
    """``alpha`` from a calibration record (``epic-calibrate --out`` or ``exp_calibration.py --json``)."""
    rec = read_json(path)
    if "alpha" not in rec:
        raise SystemExit(f"{path} has no 'alpha' key")
    return float(rec["alpha"])


def chosen_alpha(args) -> float:
    """``--alpha``, else the alpha of ``--calibration``, else ``DEFAULT_ALPHA``."""
    if args.alpha is not None:
        return args.alpha
    return read_alpha(args.calibration) if args.calibration else DEFAULT_ALPHA


def repo_relative(path) -> str:
    """``path`` relative to the repository root when it lies inside it (as recorded in results), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def git_revision() -> str:
    """HEAD of the repository, with ``+dirty`` when the library's files have local changes."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "epic_kernels", "csrc"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Where a result was measured: cores, threads, versions, load averages, OpenMP wait policy, revision."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU only)"
    return dict(cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), processor=platform.processor() or platform.machine(),
                gpu=gpu, loadavg_start=_LOAD_AT_START, loadavg_end=loadavg(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), git=git_revision())


def plt():
    """matplotlib's pyplot with the file-only Agg backend (imported only when a plot is asked for)."""
    matplotlib = require("matplotlib", "experiments", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_figure(fig, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def experiment_main(argv, model, tok, *, parse, run, table, plot, headline, json_indent: int | None = 2) -> int:
    """The shared ``main`` of the experiment scripts: run (or reload ``--from-json``), print a
    headline and the markdown table, write ``--json`` and ``--plot``."""
    args = parse(argv)
    if args.from_json:
        out = read_json(args.from_json)
        args = argparse.Namespace(**dict(vars(args), **{k: v for k, v in out["settings"].items()
                                                         if k not in ("json", "plot", "from_json")}))
    else:
        out = run(args, model, tok)
    print(headline(args, out))
    print(table(out))
    if not args.from_json:
        write_json(args.json, out, json_indent)
    if args.plot:
        plot(out, args.plot)
    return 0
