"""EPIC decoding on llama.cpp: ``epic_kernels.llama.generate(model, input_ids, ...)``.

The same step as ``epic_kernels.generate`` (``engine.step.fast_sample``: the search, prefetch,
cross-step reuse and the ``max_rows`` bound), on the llama.cpp runtime (``runtime.LlamaRuntime``):
the prompts are decoded once into sequence ids, every model call of a step is one ``llama_decode``
over many sequence ids, and each winner's cell joins its prefix (never decoded again). Returns a
``generation.GenerationOutput`` as ``epic_kernels.generate`` does.
"""
from __future__ import annotations

import time

import torch

from .. import defaults
from ..api import warn_if_expensive
from ..core import EpicConfig, Prefix
from ..engine.prefetch import LEVELS
from ..engine.step import fast_sample
from ..generation import GenerationOutput, StepRecord, _checked_mask
from ..truncation import truncate
from ..validate import check_config, check_input_ids, check_int, check_seeds, check_token_ids
from .model import LlamaModel
from .runtime import LLAMA_MAX_SEQ, LlamaRuntime

N_BATCH = 512        # most tokens (rows) in one llama_decode; larger calls are split


MIN_CELLS = 4096     # the default context's least size (the embedded model: 23 KB per cell)


def live_cells(prompt_lengths, max_new_tokens: int, horizon: int, n_seq_max: int = LLAMA_MAX_SEQ) -> int:
    """The most KV cells a generation can hold live at once: every prefix at its final length, and
    the own tokens of every path (``n_seq_max - B - 1`` ids, each at most ``horizon`` tokens plus the
    ``LEVELS`` lead tokens of prefetch bets)."""
    B = len(prompt_lengths)
    return sum(prompt_lengths) + B * (max_new_tokens + 1) + (n_seq_max - B - 1) * (horizon + LEVELS)


def context_cells(prompt_lengths, max_new_tokens: int, horizon: int) -> int:
    """The default context: twice the live cells (the rest holds cells of released paths until the
    runtime rebuilds the cache), at least ``MIN_CELLS``, a multiple of 256."""
    need = max(MIN_CELLS, 2 * live_cells(prompt_lengths, max_new_tokens, horizon))
    return -(-need // 256) * 256


def load(model) -> LlamaModel:
    """A ``LlamaModel`` as it is, or the GGUF file at path ``model`` (None: the embedded SmolLM2)."""
    return model if isinstance(model, LlamaModel) else LlamaModel(model)


def check_tokenizer(model: LlamaModel, tokenizer) -> None:
    """A tokenizer whose ids reach beyond the model's logits rows (another model's) is a ValueError."""
    n = len(tokenizer)
    if n > model.n_vocab:
        raise ValueError(f"the tokenizer has {n} tokens but {model.path.name} has a vocabulary of {model.n_vocab}: "
                         "they belong to different models; use the tokenizer of this GGUF file")


def _decode(rt, prompts, batch, seeds, eos, cfg, max_new_tokens, top_k, top_p, min_p, prefetch, reuse, on_step):
    """The decoding loop of ``generate`` on a fresh runtime: per sequence, the new tokens and the
    entropies of the model's distribution at each step, and the steps' records."""
    model = rt.model
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    entropies: list[list[float]] = [[] for _ in range(batch)]
    records: list[StepRecord] = []
    if max_new_tokens > 0:
        from ..ops import choose
        from ..ops.softmax_entropy import softmax_entropy_impl

        logits = rt.prefill(prompts)
        which, which_topk = choose(logits.device, None), choose(logits.device, None, "topk_support")
        rows = torch.arange(batch)
        prefetched = None
        transform = (lambda nxt, seq, tokens: truncate(nxt, top_k, top_p, min_p, which_topk)) if prefetch else None
        warned = False
        for step in range(max_new_tokens):
            start = time.perf_counter()
            h_q, _, _ = softmax_entropy_impl(logits, backend=which)
            advance = step + 1 < max_new_tokens
            prefix = Prefix([], torch.ones(len(rows), 0, dtype=torch.int64), rt.positions(), seeds[rows])
            step_logits = truncate(logits, top_k, top_p, min_p, which_topk)
            if not warned:
                warned = warn_if_expensive(step_logits, prefix, cfg)
            rt.begin_step()
            res = fast_sample(step_logits, prefix, model, cfg, advance=advance, prefetched=prefetched,
                              transform=transform, reuse=reuse, runtime=rt)
            tokens = res.tokens
            if advance:
                rt.commit(res.winner_paths)
                logits, prefetched = res.next_logits, res.prefetched
            for i, r in enumerate(rows.tolist()):
                new_tokens[r].append(int(tokens[i]))
                entropies[r].append(float(h_q[i]))
            done = torch.tensor([int(t) in eos for t in tokens.tolist()], dtype=torch.bool)
            keep = (~done).nonzero().flatten()
            if advance and len(keep) < len(rows):     # finished sequences leave the batch
                logits = logits[keep]
                rt.select(keep)
                prefetched = prefetched.select(keep, None) if prefetched is not None else None
            records.append(StepRecord.of(len(rows), res.stats, time.perf_counter() - start))
            if on_step is not None:
                on_step(step, rows, tokens)
            rows = rows[keep]
            if len(rows) == 0:
                break
    return new_tokens, entropies, records


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 64, alpha: float = defaults.ALPHA, horizon: int = defaults.HORIZON,
             rollouts: int = defaults.ROLLOUTS, seed=0, eos_token_id="model", pad_token_id: int = 0,
             top_k: int | None = defaults.TOP_K, top_p: float | None = None, min_p: float | None = None,
             rollout_top_k: int | None = defaults.ROLLOUT_TOP_K, block_size: int = defaults.BLOCK_SIZE,
             prefetch: bool = True, reuse: bool = True, on_step=None, max_rows: int | None = defaults.MAX_ROWS,
             threads: int | None = None, n_ctx: int | None = None, n_seq_max: int = LLAMA_MAX_SEQ, tokenizer=None,
             runtime_out: list | None = None) -> GenerationOutput:
    """Decode up to ``max_new_tokens`` tokens per sequence with EPIC on llama.cpp.

    ``model``: a ``LlamaModel``, or the path of a GGUF file (None: the embedded SmolLM2).
    ``input_ids`` / ``attention_mask``: left-padded prompts ``[B, T]``, as for ``epic_kernels.generate``.
    ``eos_token_id``: ids that end a sequence; ``"model"`` (default) takes llama.cpp's
    end-of-generation set of the model, None runs to ``max_new_tokens``.
    ``threads``: llama.cpp's threads (default: up to 2 of this process's cores); ``n_ctx``: KV cells
    (default: ``context_cells``); ``n_seq_max``: the context's sequence ids (llama.cpp's limit, 256, by
    default; when a step needs more live paths the engine drops prefetch bets and gives back paths
    it can evaluate again, the tokens unchanged). ``tokenizer``: checked against the
    model's vocabulary when given. ``runtime_out``: a list that receives the runtime (for its
    counters). The other parameters are ``epic_kernels.generate``'s; the tokens for a seed are the
    same whatever the batch, ``max_rows``, ``prefetch``, ``reuse`` and ``threads`` (up to float
    rounding of a row computed in another call, as for any batching).
    """
    model = load(model)
    if tokenizer is not None:
        check_tokenizer(model, tokenizer)
    check_input_ids(input_ids, model.n_vocab)
    check_int(max_new_tokens, "max_new_tokens", 0)
    eos = set(model.eog_ids() if eos_token_id == "model" else
              check_token_ids(eos_token_id, "eos_token_id", model.n_vocab))
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                     block_size=block_size, max_rows=max_rows)
    check_config(cfg)
    if threads is not None:
        check_int(threads, "threads", 1)
    input_ids = input_ids.to(torch.int64).cpu()
    mask = _checked_mask(input_ids, attention_mask)
    batch = input_ids.shape[0]
    seeds = check_seeds(seed, batch)
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    longest = max(len(p) for p in prompts)
    last = longest + max_new_tokens + horizon + LEVELS
    if last > model.n_ctx_train:
        raise ValueError(f"this generation (prompt {longest}, max_new_tokens {max_new_tokens} and the lookahead) "
                         f"reaches position {last}, beyond the {model.n_ctx_train} positions {model.path.name} was "
                         "trained for: use a shorter prompt, fewer max_new_tokens or a smaller horizon")
    check_int(n_seq_max, "n_seq_max", 8, LLAMA_MAX_SEQ)
    need = context_cells([len(p) for p in prompts], max_new_tokens, horizon)
    if n_ctx is not None:
        check_int(n_ctx, "n_ctx", 1)
        if sum(len(p) for p in prompts) > n_ctx:
            raise ValueError(f"the prompts hold {sum(len(p) for p in prompts)} tokens, more than n_ctx={n_ctx} KV "
                             f"cells: give n_ctx >= {need} (what this request can need) or shorter prompts")
    rt = LlamaRuntime(model, batch, n_ctx or need, N_BATCH, threads, n_seq_max)
    if runtime_out is not None:
        runtime_out.append(rt)

    try:
        new_tokens, entropies, records = _decode(rt, prompts, batch, seeds, eos, cfg, max_new_tokens, top_k, top_p,
                                                 min_p, prefetch, reuse, on_step)
    finally:
        if runtime_out is None:
            rt.close()
    n = max((len(t) for t in new_tokens), default=0)
    tail = torch.full((batch, n), pad_token_id, dtype=torch.int64)
    for r, toks in enumerate(new_tokens):
        tail[r, :len(toks)] = torch.tensor(toks, dtype=torch.int64)
    return GenerationOutput(torch.cat([input_ids, tail], dim=1), new_tokens, entropies, records)


__all__ = ["generate", "context_cells", "live_cells", "check_tokenizer", "load", "N_BATCH"]
