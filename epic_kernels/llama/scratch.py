"""llama.cpp as a Hugging Face-style model that recomputes every row from scratch: the model the
reference samplers (``epic_kernels.reference``) run on when their tokens are checked against the
llama.cpp engine's.

"From scratch" means a context holding that text only, with the same settings as the engine's
(flash attention, f16 KV cache): nothing is shared with other texts (no sequence-id forks, no cells
of other sequences, no rows of other sequences in a call).

The reference feeds a ``transformers.DynamicCache`` it builds from ``Prefix.layers`` and extends with
every call. Here that cache carries **token ids** instead of keys and values (one layer, ``[rows, 1,
length, 1]`` float64, exact for any vocabulary): each call reads every row's whole text from it
(its 1-entries of ``attention_mask``) and returns the last position's logits, and appends the
call's tokens to the cache as the reference expects.

To stay fast it keeps the text decoded last in its context and, for the next text, removes the
tokens after their common part (``llama_memory_seq_rm``) instead of decoding it all again: the
cells kept are what a fresh decode of that part would write (the same tokens, decoded the same way).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ..core import Prefix
from .runtime import LlamaRuntime


def token_prefix(texts: list[list[int]], seeds: torch.Tensor) -> Prefix:
    """A ``Prefix`` for the reference whose one cache layer holds the token ids of ``texts``
    (left padded; positions are the texts' lengths)."""
    L = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), 1, L, 1, dtype=torch.float64)
    mask = torch.zeros(len(texts), L, dtype=torch.int64)
    for b, t in enumerate(texts):
        ids[b, 0, L - len(t):, 0] = torch.tensor(t, dtype=torch.float64)
        mask[b, L - len(t):] = 1
    return Prefix([(ids, ids)], mask, mask.sum(-1), seeds)


class ScratchModel:
    """``model(input_ids [N, 1], attention_mask [N, L + 1], position_ids, past_key_values, use_cache)``
    as the reference calls it; ``calls`` and ``decoded`` count calls and tokens decoded."""

    def __init__(self, model, n_ctx: int = 1024, threads: int | None = None):
        self.model = model
        self.rt = LlamaRuntime(model, 1, n_ctx, threads=threads)
        self.calls = self.decoded = 0
        self._text: list[int] = []             # what the context holds (sequence id 0)
        self._memo: dict = {}                  # text -> logits

    def logits_of(self, text: list[int]) -> torch.Tensor:
        """The logits ``[V]`` after ``text``."""
        key = tuple(text)
        got = self._memo.get(key)
        if got is not None:
            return got
        rt = self.rt
        keep = 0
        while keep < min(len(self._text), len(text) - 1) and self._text[keep] == text[keep]:
            keep += 1
        pads = rt.pads
        if keep + pads + len(text) - keep + 2 > rt.n_ctx:
            rt.lib.llama_memory_clear(rt.mem, True)       # padding cells filled the context: start afresh
            keep, pads = 0, 0
            rt.pads = 0
        # the context holds self._text in position order (and buried padding cells); cutting its tail
        # frees its last cells, so the new tokens again follow the kept ones in position order
        rt.lib.llama_memory_seq_rm(rt.mem, 0, keep, -1)
        rt.cells = keep + pads
        got = rt._decode_text(0, text[keep:], keep, logits=True)
        self._text = list(text)
        self.decoded += len(text) - keep
        self._memo[key] = got
        return got

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                 **_):
        cache = past_key_values
        history = cache.layers[0].keys[:, 0, :, 0]          # [N, L] token ids
        N, L = history.shape
        mask = attention_mask[:, :L].bool() if attention_mask is not None else torch.ones(N, L, dtype=torch.bool)
        rows = []
        for n in range(N):
            text = [int(t) for t in history[n][mask[n]].tolist()] + [int(input_ids[n, -1])]
            rows.append(self.logits_of(text))
        self.calls += 1
        new = input_ids[:, -1:].to(torch.float64).view(N, 1, 1, 1)
        cache.update(new, new, 0)
        return SimpleNamespace(logits=torch.stack(rows).unsqueeze(1))

    def close(self) -> None:
        self.rt.close()


__all__ = ["ScratchModel", "token_prefix"]
