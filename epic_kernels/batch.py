"""``DecodeBatch``: sequences decoding together, one EPIC step at a time, that join and leave
between steps (continuous batching).

``generate`` admits its whole batch at once and steps it to the end; a server admits each request
when it arrives and removes it when it finishes or its client goes away. Either way a sequence's
tokens depend only on its own prompt and seed (its noise is keyed by the seed and its own position),
not on what else is in the batch or when it joined.

State, one row per active sequence (the order of ``handles``):

* ``cache``: an ``EpicCache`` of every row's prefix, left padded to a common length; ``mask`` marks
  the real tokens, so each row's positions are its own;
* ``logits``: each row's next-token logits; ``seeds``: each row's noise key;
* ``prefetched``: the last step's hand-over to the next (``engine.prefetch.Prefetched``).

A join prefills the new prompts on their own, then lays their cache beside the running one (left
padding the shorter side); a leave drops the rows and then the columns of padding no row needs.
Either drops the prefetch hand-over when it changes the columns (it is made for one cache; the next
step evaluates afresh, with the same tokens).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch

from .api import run_step, use_fast_engine, warn_if_expensive
from .cache import EpicCache
from .core import EpicConfig, Prefix, StepStats
from .truncation import truncate
from .validate import check_config, cache_layers


class SequenceError(ValueError):
    """A step cannot run some sequences (``handles``); the batch is unchanged, so removing them lets
    the others go on."""

    def __init__(self, message: str, handles: list[int]):
        super().__init__(message)
        self.handles = handles


@dataclass
class BatchStep:
    """One step of a ``DecodeBatch``: ``tokens[i]`` was sampled for sequence ``handles[i]``."""

    handles: list[int]
    tokens: torch.Tensor          # int64 [n]
    entropies: torch.Tensor       # [n] H(q(. | prefix)) of the logits the step sampled from (before truncation)
    logits: torch.Tensor          # [n, V] the model's logits of the step
    scores: torch.Tensor          # [n, V] after the logits processor (before truncation)
    stats: StepStats

    def costs(self, i: int) -> dict:
        """What row ``i`` rode in: the step's model calls and rows (the whole batch's), and its own
        candidate evaluations."""
        st = self.stats
        return dict(model_calls=st.forward_calls + st.finish_calls, rows=st.forward_tokens + st.finish_tokens,
                    evaluated=int(st.evaluated_depth1[i]) + int(st.evaluated_deeper[i]))


def _left_pad(t: torch.Tensor, width: int, value=0) -> torch.Tensor:
    """``t`` (dim 2 for a ``[B, H, L, D]`` cache tensor, else the last dim) padded on the left to ``width``."""
    dim = 2 if t.dim() == 4 else t.dim() - 1
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_full(shape, value), t], dim=dim)


class DecodeBatch:
    """Sequences decoding with one EPIC configuration (``cfg`` and the candidate truncation), one
    step at a time; ``admit`` and ``remove`` between steps (see the module docstring).

    ``processor``: optional ``f(handles [n], logits [n, V], tokens [n, j] | None) -> scores`` applied
    before EPIC at every step; ``tokens``, when given, are ``j`` tokens that would come next for each
    row (the fast engine's prefetch asks what a later step would see). ``max_position``: the largest
    position id any row will reach (the fast engine checks sliding windows against it).
    ``warn_stacklevel``: where the warning before a very long step points (``api.warn_if_expensive``;
    ``generate`` makes it point at its own caller)."""

    def __init__(self, model, cfg: EpicConfig, *, top_k=None, top_p=None, min_p=None, engine: str = "auto",
                 backend: str | None = None, prefetch: bool = True, reuse: bool = True, processor=None,
                 max_position: int | None = None, warn_stacklevel: int = 4):
        check_config(cfg)
        self.model, self.cfg, self.backend = model, cfg, backend
        self.top_k, self.top_p, self.min_p = top_k, top_p, min_p
        self.fast = use_fast_engine(engine, model, max_position)
        self.prefetch, self.reuse, self.processor = prefetch and self.fast, reuse, processor
        self.device = next(model.parameters()).device
        from .ops import choose

        # top-k truncation's op (ops.topk_support): the same result on every backend
        self.topk_backend = choose(self.device, backend, "topk_support") if self.fast else "reference"
        self.handles: list[int] = []
        self.cache = self.mask = self.logits = self.seeds = None
        self.prefetched = None
        self.warned, self.warn_stacklevel = False, warn_stacklevel
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self.handles)

    @property
    def columns(self) -> int:
        """The cache's length (the longest row's prefix plus the padding of the others)."""
        return 0 if self.mask is None else self.mask.shape[1]

    @torch.no_grad()
    def admit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seeds: torch.Tensor) -> list[int]:
        """Prefill ``input_ids`` ``[n, T]`` (left padded, ``attention_mask`` 0/1 int64 on the CPU,
        validated by the caller) and add them to the batch with noise keys ``seeds`` (int64 ``[n]``);
        returns their handles. One prefill for the ``n`` new prompts; running rows are not
        recomputed."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = EpicCache(num_layers=0)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        handles = [next(self._ids) for _ in range(input_ids.shape[0])]
        if not self.handles:
            self.cache, self.mask, self.logits, self.seeds = cache, attention_mask, logits, seeds.clone()
        else:
            width = max(self.columns, attention_mask.shape[1])
            layers = [(torch.cat([_left_pad(k0, width), _left_pad(k1, width)]),
                       torch.cat([_left_pad(v0, width), _left_pad(v1, width)]))
                      for (k0, v0), (k1, v1) in zip(cache_layers(self.cache), cache_layers(cache))]
            self.cache = EpicCache.from_layers(layers)
            self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(attention_mask, width)])
            self.logits = torch.cat([self.logits, logits])
            self.seeds = torch.cat([self.seeds, seeds])
            self.prefetched = None
        self.handles += handles
        return handles

    def _transform(self, nxt, seq, tokens):
        """What a later step sees if ``tokens`` come next for rows ``seq`` (the prefetch's bet)."""
        if self.processor is not None:
            nxt = self.processor([self.handles[i] for i in seq.tolist()], nxt, tokens)
        return truncate(nxt, self.top_k, self.top_p, self.min_p, self.topk_backend)

    @torch.no_grad()
    def step(self, advance: bool = True) -> BatchStep:
        """One EPIC step for every row. ``advance``: also compute the next logits (False when every
        row ends after this step: it saves the last forward). Raises on an empty batch, and
        ``SequenceError`` (nothing changed) for rows whose logits are NaN."""
        from .ops import choose
        from .ops.softmax_entropy import softmax_entropy_impl

        if not self.handles:
            raise RuntimeError("DecodeBatch.step: the batch is empty (admit a sequence first)")
        logits = self.logits
        bad = torch.isnan(logits).any(-1)
        if bad.any():
            handles = [self.handles[i] for i in bad.nonzero().flatten().tolist()]
            raise SequenceError(f"the model's next-token logits contain NaN for sequences {handles[:8]} (transformers "
                                "gives NaN for some model families on left-padded prompts: prefill such prompts one "
                                "at a time)", handles)
        h_q, _, _ = softmax_entropy_impl(logits, backend=choose(logits.device, self.backend))
        scores = logits if self.processor is None else self.processor(list(self.handles), logits, None)
        prefix = Prefix.view(self.cache, self.mask, self.seeds)
        step_logits = truncate(scores, self.top_k, self.top_p, self.min_p, self.topk_backend)
        if not self.warned:
            self.warned = warn_if_expensive(step_logits, prefix, self.cfg, self.backend, self.warn_stacklevel)
        res = run_step(step_logits, self.cache, prefix, self.model, self.cfg, fast=self.fast,
                       backend=self.backend, advance=advance, prefetched=self.prefetched,
                       transform=self._transform if self.prefetch else None, reuse=self.reuse)
        if advance:
            self.logits, self.cache, self.mask, self.prefetched = (res.next_logits, res.kv, res.attention_mask,
                                                                   res.prefetched)
        else:                       # the rows cannot step again: nothing to hand over
            self.logits = self.prefetched = None
        return BatchStep(list(self.handles), res.tokens, h_q, logits, scores, res.stats)

    def take(self, handles) -> "DecodeBatch":
        """Move the rows of ``handles`` into a new batch of the same settings (their handles kept):
        a server retries the rows of a failed step apart, to find the one that fails."""
        wanted = set(handles)
        rows = [i for i, h in enumerate(self.handles) if h in wanted]
        if self.logits is None or not rows:
            raise RuntimeError("DecodeBatch.take: needs rows of a batch whose last step advanced")
        other = copy.copy(self)                    # settings, model and the handle counter shared
        idx = torch.tensor(rows, dtype=torch.int64)
        other.handles = [self.handles[i] for i in rows]
        other.mask, other.logits, other.seeds = self.mask[idx], self.logits[idx], self.seeds[idx]
        other.cache = EpicCache.from_layers([(k[idx.to(k.device)], v[idx.to(v.device)])
                                             for k, v in cache_layers(self.cache)])
        other.prefetched = None
        self.remove(other.handles)
        other._trim()
        return other

    def remove(self, handles) -> None:
        """Drop the rows of ``handles`` (finished, cancelled or failed sequences), then the columns of
        left padding that no remaining row needs. Unknown handles are ignored."""
        gone = set(handles)
        if not gone & set(self.handles):
            return
        keep = [i for i, h in enumerate(self.handles) if h not in gone]
        self.handles = [self.handles[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.logits = self.seeds = self.prefetched = None
            return
        rows = torch.tensor(keep, dtype=torch.int64)
        if self.logits is None:
            raise RuntimeError("DecodeBatch.remove: the last step did not advance; only removing every row is possible")
        self.mask, self.logits, self.seeds = self.mask[rows], self.logits[rows], self.seeds[rows]
        self.cache.batch_select_indices(rows.to(self.device))
        self.prefetched = self.prefetched.select(rows, self.cache) if self.prefetched is not None else None
        self._trim()

    def _trim(self) -> None:
        """Drop the columns that are padding in every row (bounded memory after a long row left)."""
        drop = self.columns - int(self.mask.sum(-1).max())
        if drop > 0:
            self.mask = self.mask[:, drop:]
            self.cache = EpicCache.from_layers([(k[:, :, drop:], v[:, :, drop:])
                                                for k, v in cache_layers(self.cache)])
            self.prefetched = None


__all__ = ["DecodeBatch", "BatchStep", "SequenceError"]
