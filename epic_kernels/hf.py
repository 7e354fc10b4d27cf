"""Hugging Face ``model.generate`` integration, two ways.

1. ``custom_generate`` (recommended)::

       model.generate(input_ids, attention_mask=mask, custom_generate=epic_kernels.hf.custom_generate,
                      epic_alpha=0.2, epic_seed=0, do_sample=True, top_k=50, max_new_tokens=64)

   Hugging Face prepares the inputs, the generation config and its logits processors (top-k, top-p,
   min-p, temperature, repetition penalty ...), then hands the decoding loop to
   ``epic_kernels.generate``, which applies those processors before every EPIC step — they truncate
   or reshape the candidates — and keeps its own forked KV cache. Same tokens as
   ``epic_kernels.generate`` with the same settings.

2. ``EpicLogitsProcessor``: a logits processor that holds the model. Hugging Face's loop owns the
   cache and never shows it to a processor, so the processor must run the model over the whole
   prefix again at every step (prefill cost each token: quadratic in the length) before it can fork
   rollouts; its output is a one-hot score row that forces EPIC's token. Hugging Face runs custom
   processors *before* its sampling warpers (temperature, top-k, top-p, min-p), so give the
   truncation to the processor itself (``EpicLogitsProcessor(model, top_k=50)``); warpers after it
   see a one-hot row and change nothing. Use it when the loop must stay Hugging Face's own; prefer
   ``custom_generate`` for speed.

Keys: sequence b's seed is ``epic_seed + b`` (or the list given) and each token's noise is keyed by
its position in its own sequence, so both ways give each sequence the tokens it would get alone.
"""
from __future__ import annotations

import torch

from . import defaults
from .generation import generate


def custom_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    epic_alpha: float = defaults.ALPHA, epic_horizon: int = defaults.HORIZON, epic_rollouts: int = defaults.ROLLOUTS,
                    epic_seed=0, epic_rollout_top_k: int | None = defaults.ROLLOUT_TOP_K,
                    epic_block_size: int = defaults.BLOCK_SIZE, **model_kwargs):
    """Decoding loop for ``model.generate(custom_generate=...)``; returns the sequences ``[B, T + n]``.

    The ``epic_*`` keyword arguments are taken from ``model.generate``'s keyword arguments.
    ``max_new_tokens`` / ``max_length``, ``eos_token_id`` and ``pad_token_id`` come from the generation
    config; its logits processors run before every EPIC step. ``model_kwargs`` carries the prompt's
    ``attention_mask`` (Hugging Face drops it when it is all ones); the rest (its cache) is unused.
    """
    attention_mask = model_kwargs.get("attention_mask")
    config = generation_config
    max_new = config.max_length - input_ids.shape[1] if config is not None else 20
    eos = getattr(config, "_eos_token_tensor", None)
    eos = None if eos is None else [int(e) for e in eos.reshape(-1).tolist()]
    pad = getattr(config, "_pad_token_tensor", None)
    pad = int(pad) if pad is not None and pad.numel() == 1 else 0
    processors = logits_processor if logits_processor is not None and len(logits_processor) else None
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=max(max_new, 0), top_k=None,
                   alpha=epic_alpha, horizon=epic_horizon, rollouts=epic_rollouts, seed=epic_seed,
                   eos_token_id=eos, pad_token_id=pad, rollout_top_k=epic_rollout_top_k,
                   block_size=epic_block_size, logits_processor=processors)
    return out.sequences


class EpicLogitsProcessor:
    """A ``transformers`` logits processor that turns each step into an EPIC step.

    Parameters
    ----------
    model : the model being decoded (the processor runs it itself: no cache reaches a processor).
    attention_mask : ``[B, T0]`` mask of the prompt (left padding); all ones if omitted.
    alpha, horizon, rollouts, seed, rollout_top_k, block_size, top_k, top_p, min_p : as
        ``epic_kernels.sample_step`` (top_k / top_p / min_p truncate the candidates before EPIC).
    """

    def __init__(self, model, *, attention_mask=None, alpha: float = defaults.ALPHA, horizon: int = defaults.HORIZON,
                 rollouts: int = defaults.ROLLOUTS, seed=0, rollout_top_k: int | None = None,
                 block_size: int = defaults.BLOCK_SIZE, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None):
        self.model, self.prompt_mask = model, attention_mask
        self.kwargs = dict(alpha=alpha, horizon=horizon, rollouts=rollouts, seed=seed, rollout_top_k=rollout_top_k,
                           block_size=block_size, top_k=top_k, top_p=top_p, min_p=min_p)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from .api import sample_step

        B, T = input_ids.shape
        if self.prompt_mask is None:
            mask = torch.ones(B, T, dtype=torch.int64)
        else:
            grown = T - self.prompt_mask.shape[1]
            mask = torch.cat([self.prompt_mask.to(torch.int64), torch.ones(B, grown, dtype=torch.int64)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        # Hugging Face hands processors float32 scores from its own cached forward. When the processors
        # before this one only removed tokens (the kept scores are the logits), use the model's logits
        # from our forward at full precision, as epic_kernels.generate does.
        native = out.logits[:, -1, :]
        kept = torch.isfinite(scores)
        if torch.allclose(scores[kept].double(), native[kept].double(), rtol=1e-5, atol=1e-5):
            scores = native.masked_fill(~kept, float("-inf"))
        step = sample_step(scores, out.past_key_values, self.model, attention_mask=mask, advance=False,
                           **self.kwargs)
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(B), step.tokens] = 0.0
        return forced
