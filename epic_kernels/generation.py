"""Whole-sequence EPIC decoding: ``epic_kernels.generate(model, input_ids, ...)``.

The whole batch is admitted into a ``batch.DecodeBatch`` (one prefill), which then runs one
``api.run_step`` per position: the same step as ``sample_step``, which hands back the next logits
and the cache extended by the sampled tokens (the winner's own forward where it had one). Sequences
that emit an end-of-sequence token leave the batch (their cache rows are dropped), so they cost
nothing afterwards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import defaults
from .api import use_fast_engine
from .batch import DecodeBatch
from .core import EpicConfig
from .validate import (check_attention_mask, check_config, check_input_ids, check_int, check_not_meta,
                       check_position_limit, check_processed, check_seeds, check_token_ids, model_vocab)


@dataclass
class StepRecord:
    """Statistics of one decoding step over the sequences still active in it."""

    active: int
    survivors: float               # mean over active sequences
    evaluated_depth1: float
    evaluated_deeper: float
    forward_calls: int             # EPIC's own model calls (the loop's token feed not included)
    forward_tokens: int
    forwards_saved: int            # sequences whose next forward came for free from the winner's
    seconds: float
    prefetched: int = 0            # candidates whose evaluation came from an earlier step's prefetch
    reused: int = 0                # ... from the previous winner's rollouts (engine/reuse.py)
    reused_rows: int = 0           # the rows those reused evaluations had fed
    finish_calls: int = 0          # model calls for winners that had no evaluation of their own

    @classmethod
    def of(cls, active: int, st, seconds: float) -> "StepRecord":
        """The record of a step over ``active`` sequences from its ``StepStats``."""
        return cls(active=active, survivors=float(st.survivors.double().mean()),
                   evaluated_depth1=float(st.evaluated_depth1.double().mean()),
                   evaluated_deeper=float(st.evaluated_deeper.double().mean()),
                   forward_calls=st.forward_calls, forward_tokens=st.forward_tokens,
                   forwards_saved=st.forwards_saved, prefetched=st.adopted, reused=st.reused,
                   reused_rows=st.reused_rows, finish_calls=st.finish_calls, seconds=seconds)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor                      # [B, T + n]: prompt (as given) + new tokens, pad after EOS
    new_tokens: list[list[int]]                  # the generated ids per sequence (EOS included)
    entropies: list[list[float]] = field(default_factory=list)   # H(q(. | prefix)) at each step
    steps: list[StepRecord] = field(default_factory=list)
    scores: list[torch.Tensor] | None = None     # output_scores: per step [B, V], the processed logits
    logits: list[torch.Tensor] | None = None     # output_logits: per step [B, V], the model's logits

    def summary(self) -> dict:
        """Totals and per-generated-token averages over the whole generation."""
        n_tokens = sum(len(t) for t in self.new_tokens)
        seconds = sum(s.seconds for s in self.steps)
        per = max(n_tokens, 1)
        weight = [s.active for s in self.steps]
        def mean(attr):
            return sum(getattr(s, attr) * w for s, w in zip(self.steps, weight)) / max(sum(weight), 1)
        return dict(tokens=n_tokens, seconds=seconds, tokens_per_second=n_tokens / seconds if seconds else 0.0,
                    mean_survivors=mean("survivors"), mean_evaluated_depth1=mean("evaluated_depth1"),
                    mean_evaluated_deeper=mean("evaluated_deeper"),
                    forward_calls_per_token=sum(s.forward_calls for s in self.steps) / per,
                    forward_tokens_per_token=sum(s.forward_tokens for s in self.steps) / per,
                    forwards_saved=sum(s.forwards_saved for s in self.steps),
                    prefetched=sum(s.prefetched for s in self.steps),
                    reused=sum(s.reused for s in self.steps), reused_rows=sum(s.reused_rows for s in self.steps),
                    finish_calls_per_token=sum(s.finish_calls for s in self.steps) / per)


def _so_far(input_ids, new_tokens, rows):
    """``[n, T + steps]``: the prompts of sequences ``rows`` followed by what they generated so far."""
    tails = torch.tensor([new_tokens[r] for r in rows.tolist()], dtype=torch.int64).view(len(rows), -1)
    return torch.cat([input_ids[rows], tails], dim=1)


def _checked_mask(input_ids, attention_mask):
    """The prompts' mask, int64 on the CPU: ``attention_mask`` checked (``validate.check_attention_mask``:
    0/1, no empty prompt, left padding), or all ones when it is None."""
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
    check_not_meta(attention_mask=attention_mask)
    return check_attention_mask(attention_mask)


def _stopped(criteria, input_ids, scores, n: int) -> torch.Tensor:
    """``criteria(input_ids, scores)`` as a bool ``[n]`` on the CPU. Transformers' ``StoppingCriteria``
    contract: a bool tensor with one entry per sequence; anything else (one value for the batch, a
    string, ...) is a ValueError naming the criterion and what it returned."""
    got = criteria(input_ids, scores)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or tuple(got.shape) != (n,):
        what = (f"a {got.dtype} tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor)
                else f"{type(got).__name__} {got!r}"[:120])
        name = getattr(criteria, "__name__", None) or type(criteria).__name__
        raise ValueError(f"stopping_criteria {name} returned {what}; it must return a bool tensor of shape [{n}] "
                         "(one entry per sequence still decoding, as transformers' StoppingCriteria do)")
    return got.cpu()


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 64, alpha: float = defaults.ALPHA, horizon: int = defaults.HORIZON,
             rollouts: int = defaults.ROLLOUTS, seed=0, eos_token_id=None, pad_token_id: int = 0,
             top_k: int | None = defaults.TOP_K, top_p: float | None = None, min_p: float | None = None,
             rollout_top_k: int | None = defaults.ROLLOUT_TOP_K, block_size: int = defaults.BLOCK_SIZE,
             engine: str = "auto", backend: str | None = None, prefetch: bool = True, reuse: bool = True,
             logits_processor=None, stopping_criteria=None, on_step=None, output_scores: bool = False,
             output_logits: bool = False, max_rows: int | None = defaults.MAX_ROWS) -> GenerationOutput:
    """Decode up to ``max_new_tokens`` tokens per sequence with EPIC.

    Parameters
    ----------
    model : causal LM with the Hugging Face call convention.
    input_ids : int64 ``[B, T]``, left-padded prompts.
    attention_mask : ``[B, T]``, 0 on padding; all ones if omitted.
    seed : int (sequence b uses ``seed + b``) or B ints: the per-sequence keys. A sequence's tokens
        depend only on its own prompt and seed, not on the rest of the batch.
    eos_token_id : int or list of ints ending a sequence (None: run to ``max_new_tokens``).
    engine : ``"auto"`` (the fast engine when the model supports it), ``"fast"`` or ``"reference"``.
    prefetch : let the fast engine evaluate each next step, on a bet, inside the current step's
        model calls (fewer calls; same tokens). With a ``logits_processor``, the prediction calls it
        on the would-be next input ids; a processor that does not depend only on those and the
        logits just makes the prediction miss.
    reuse : let the fast engine hand each winner's rollouts to the next step, whose candidates they
        pass through (``engine.reuse``: fewer rows, sometimes fewer calls; same tokens).
    logits_processor : optional ``f(input_ids [n, T], logits [n, V]) -> logits`` applied before EPIC at
        every step (for example a Hugging Face ``LogitsProcessorList`` with top-k / top-p warpers).
    stopping_criteria : optional ``f(input_ids [n, T], logits) -> bool tensor [n]`` ending sequences
        early (transformers' ``StoppingCriteria`` contract; anything else is a ValueError).
    on_step : optional callback ``on_step(step, rows, tokens)`` after each step (for streaming):
        ``tokens [n]`` were sampled for sequences ``rows [n]`` (the ones still active).
    output_scores, output_logits : keep, per step, the scores EPIC sampled from (the logits after
        ``logits_processor``, before truncation) and the model's raw logits, each ``[B, V]``; rows of
        sequences that already finished are ``-inf``.
    max_rows : the most rows one model call carries (bounded memory; the tokens do not depend on it).
        Before the first step with more than ``defaults.WARN_SURVIVORS`` survivors a warning gives
        the count and the fix (once per call; ``api.warn_if_expensive``).
    Other parameters: as ``sample_step``; the defaults (top-50 candidates and rollout policy, ...)
    are explained in ``epic_kernels.defaults``. Pass ``top_k=None, rollout_top_k=None`` for the
    full vocabulary.
    """
    vocab = model_vocab(model)
    check_not_meta(model, input_ids=input_ids)
    check_input_ids(input_ids, vocab)
    check_int(max_new_tokens, "max_new_tokens", 0)
    eos = set(check_token_ids(eos_token_id, "eos_token_id", vocab))
    pad_token_id = check_token_ids(pad_token_id, "pad_token_id", allow_none=False)
    if len(pad_token_id) != 1:
        raise ValueError(f"pad_token_id must be one token id, got {len(pad_token_id)}")
    pad_token_id = pad_token_id[0]
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                     block_size=block_size, max_rows=max_rows)
    check_config(cfg)
    device = input_ids.device                       # the model's; the decode's bookkeeping stays on the CPU
    input_ids = input_ids.to(torch.int64).cpu()
    mask = _checked_mask(input_ids, attention_mask)
    # the largest position id any row reaches: the longest prompt, the new tokens, the lookahead
    longest = int(mask.sum(-1).max())
    fast = use_fast_engine(engine, model, longest + max_new_tokens + horizon + 2)
    if max_new_tokens > 0:
        # the last step's candidate sits at position longest + max_new_tokens - 1, its rollouts reach
        # horizon - 1 beyond (2 more for the fast engine's prefetch)
        check_position_limit(model, longest + max_new_tokens + horizon - 2 + (2 if fast else 0),
                             "this generation (prompt, max_new_tokens and lookahead)",
                             "use a shorter prompt, fewer max_new_tokens or a smaller horizon")
    batch = input_ids.shape[0]
    seeds = check_seeds(seed, batch)

    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    entropies: list[list[float]] = [[] for _ in range(batch)]
    records: list[StepRecord] = []
    kept_scores = [] if output_scores else None
    kept_logits = [] if output_logits else None

    def keep_rows(store, values, rows):
        if store is not None:
            full = values.new_full((batch, values.shape[-1]), float("-inf"))
            full[rows] = values
            store.append(full)

    def process(handles, logits, tokens):          # generate's logits_processor over the ids so far
        ids = _so_far(input_ids, new_tokens, torch.tensor(handles, dtype=torch.int64))
        if tokens is not None:                     # a prefetch bet: the ids a later step would see
            ids = torch.cat([ids, tokens.cpu()], dim=1)
        got = logits_processor(ids.to(logits.device), logits)
        check_processed(got, logits)
        return got

    if max_new_tokens > 0:
        batch_ = DecodeBatch(model, cfg, top_k=top_k, top_p=top_p, min_p=min_p, engine=engine, backend=backend,
                             prefetch=prefetch, reuse=reuse, processor=process if logits_processor is not None else None,
                             max_position=longest + max_new_tokens + horizon + 2,
                             warn_stacklevel=6)       # at generate's caller (through two no_grad wrappers)
        batch_.admit(input_ids, mask, seeds)       # handles 0 .. B-1: the rows of input_ids
        for step in range(max_new_tokens):
            start = time.perf_counter()
            advance = step + 1 < max_new_tokens
            rows = torch.tensor(batch_.handles, dtype=torch.int64)
            res = batch_.step(advance=advance)
            keep_rows(kept_scores, res.scores, rows)
            keep_rows(kept_logits, res.logits, rows)
            tokens = res.tokens
            for i, r in enumerate(rows.tolist()):
                new_tokens[r].append(int(tokens[i]))
                entropies[r].append(float(res.entropies[i]))
            done = torch.tensor([int(t) in eos for t in tokens.tolist()], dtype=torch.bool)
            if stopping_criteria is not None:
                done |= _stopped(stopping_criteria, _so_far(input_ids, new_tokens, rows).to(res.scores.device),
                                 res.scores, len(rows))
            if advance and done.any():                # finished sequences leave the batch's work
                batch_.remove(rows[done].tolist())
            records.append(StepRecord.of(len(rows), res.stats, time.perf_counter() - start))
            if on_step is not None:
                on_step(step, rows, tokens)
            if done.all():
                break
    n = max((len(t) for t in new_tokens), default=0)
    tail = torch.full((batch, n), pad_token_id, dtype=torch.int64)
    for r, toks in enumerate(new_tokens):
        tail[r, :len(toks)] = torch.tensor(toks, dtype=torch.int64)
    return GenerationOutput(torch.cat([input_ids, tail], dim=1).to(device), new_tokens, entropies, records, kept_scores,
                            kept_logits)
