"""Shared helpers of the model benchmarks: arguments, the embedded model, GSM8K prompts, interleaved
timing, the HF top-p baseline, markdown tables and JSON output.

Every benchmark reports RATIOS against a baseline measured in the same run: the machines are shared
and noisy, so absolute times move by 2x between runs while ratios of interleaved repeats do not.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Import this module BEFORE torch. On these shared 2-core machines OpenMP's default active spin-wait
# makes every 2-thread parallel op wait for a descheduled partner thread whenever other engineers'
# jobs run: measured 100-400x slower small ops (fork attention 0.3 ms -> 108 ms, a 22 MiB deepcopy
# 3 ms -> 590 ms). Passive waiting removes that. It must be set before libgomp loads; export
# OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:                # run as `python benchmarks/x.py` without PYTHONPATH
    sys.path.insert(0, str(REPO_ROOT))
# The data set lives beside the repository: <root>/../shared/data/gsm8k/test.jsonl
DEFAULT_DATA = (REPO_ROOT / ".." / "shared" / "data" / "gsm8k" / "test.jsonl").resolve()


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --quick, --json, --data, --threads, --seed, --model."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short smoke run (a few steps)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K jsonl (prompts: the `question` field)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="EPIC per-sequence seed (sequence b uses seed + b)")
    p.add_argument("--model", default=None, help="HF directory or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--no-progress", action="store_true", help="disable tqdm progress bars")
    return p


_LOAD_AT_START = None


def loadavg():
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def setup_torch(threads: int) -> None:
    global _LOAD_AT_START
    import torch

    _LOAD_AT_START = loadavg()
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_prompts(path: str | os.PathLike, n: int, start: int = 0) -> list[str]:
    """The ``question`` field of ``n`` GSM8K problems, from line ``start`` on."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"data file {path} not found (give --data)")
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    return out


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


def chat_ids(tok, text: str):
    from epic_kernels.models import chat_prompt_ids

    return chat_prompt_ids(tok, text)


def left_pad(seqs, pad_id: int = 0):
    """Left-pad a list of ``[1, T_i]`` id tensors into ``(ids [B, T], mask [B, T])``."""
    import torch

    T = max(s.shape[1] for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), T), dtype=torch.int64)
    for b, s in enumerate(seqs):
        ids[b, T - s.shape[1]:] = s[0]
        mask[b, T - s.shape[1]:] = 1
    return ids, mask


def progress(iterable, disable: bool = False, **kw):
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
    import torch

    return dict(cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), processor=platform.processor() or platform.machine(),
                gpu="none (CPU only)", loadavg_start=_LOAD_AT_START, loadavg_end=loadavg(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                git=git_revision())


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            if x != x:
                return "n/a"
            if abs(x) >= 100:
                return f"{x:.0f}"
            if abs(x) >= 10:
                return f"{x:.1f}"
            return f"{x:.3g}" if abs(x) < 0.1 else f"{x:.2f}"
        return "" if x is None else str(x)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path, payload: dict) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"\nwrote {path}", file=sys.stderr)
