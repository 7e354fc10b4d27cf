"""Hugging Face ``model.generate`` integration, three ways.

1. ``custom_generate`` (a callable; recommended)::

       model.generate(input_ids, attention_mask=mask, custom_generate=epic_kernels.hf.custom_generate,
                      epic_alpha=0.2, epic_seed=0, do_sample=True, top_k=50, max_new_tokens=64)

   Hugging Face prepares the inputs, the generation config, its logits processors (top-k, top-p,
   min-p, temperature, repetition penalty ...) and its stopping criteria (max length, ``max_time``,
   EOS, ``stop_strings``), then hands the decoding loop to ``epic_kernels.generate``, which applies
   those processors before every EPIC step (they truncate or reshape the candidates), ends sequences
   by those criteria, and keeps its own ``EpicCache``. Same tokens as ``epic_kernels.generate`` with the
   same settings. ``streamer``, ``return_dict_in_generate`` with ``output_scores`` / ``output_logits``,
   ``num_return_sequences`` (each copy its own seed: ``epic_seed + row``) and ``stop_strings`` (pass
   ``tokenizer=``) are honoured; what EPIC cannot honour is an error, never ignored: greedy decoding
   (``do_sample=False``), beam search, assisted decoding, ``output_attentions`` /
   ``output_hidden_states``.

2. ``custom_generate=epic_kernels.hf.CUSTOM_GENERATE_DIR`` (with ``trust_remote_code=True``): the
   same loop as a Hub-style ``custom_generate/generate.py`` folder, transformers' convention for
   community decoding methods (the folder can be pushed to the Hub as it is).

3. ``EpicLogitsProcessor``: a logits processor that holds the model. Hugging Face's loop owns the
   cache and never shows it to a processor, so the processor must run the model over the whole
   prefix again at every step (prefill cost each token: quadratic in the length) before it can fork
   rollouts; its output is a one-hot score row that forces EPIC's token. Hugging Face runs custom
   processors *before* its sampling warpers (temperature, top-k, top-p, min-p), so give the
   truncation to the processor itself (``EpicLogitsProcessor(model, top_k=50)``); warpers after it
   see a one-hot row and change nothing. Use it when the loop must stay Hugging Face's own.

Keys: sequence b's seed is ``epic_seed + b`` (or the list given) and each token's noise is keyed by
its position in its own sequence, so every way gives each sequence the tokens it would get alone.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

from . import defaults
from .generation import generate

CUSTOM_GENERATE_DIR = str(Path(__file__).resolve().parent / "hub")


def _refuse(config, model_kwargs) -> None:
    """What EPIC cannot honour is an error naming the option."""
    if config is None:
        return
    if not getattr(config, "do_sample", True):
        raise ValueError("EPIC samples: do_sample=False (greedy decoding) cannot be honoured by "
                         "epic_kernels.hf.custom_generate; pass do_sample=True")
    if (getattr(config, "num_beams", 1) or 1) > 1:
        raise ValueError(f"EPIC samples one token per step: num_beams={config.num_beams} (beam search) "
                         "is not supported")
    for name in ("output_attentions", "output_hidden_states"):
        if getattr(config, name, False) or model_kwargs.get(name):
            raise ValueError(f"{name}=True is not supported by EPIC decoding (its forwards fork rollouts "
                             "and have no per-token attentions or hidden states to return)")
    if model_kwargs.get("past_key_values") is not None and len(model_kwargs["past_key_values"].layers) \
            and model_kwargs["past_key_values"].get_seq_length() > 0:
        raise ValueError("custom_generate prefills the prompt itself: pass no filled past_key_values")


def _caller_streamer():
    """transformers drops ``streamer`` (and ``synced_gpus``) from what it hands a callable
    ``custom_generate`` (``_extract_generation_mode_kwargs``); read it from its ``generate`` frame."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "generate" and "transformers" in code.co_filename:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None


def custom_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                    epic_alpha: float = defaults.ALPHA, epic_horizon: int = defaults.HORIZON,
                    epic_rollouts: int = defaults.ROLLOUTS, epic_seed=0,
                    epic_rollout_top_k: int | None = defaults.ROLLOUT_TOP_K,
                    epic_block_size: int = defaults.BLOCK_SIZE, epic_engine: str = "auto", epic_streamer=None,
                    epic_stop_strings=None, epic_tokenizer=None, **model_kwargs):
    """Decoding loop for ``model.generate(custom_generate=...)``.

    The ``epic_*`` keyword arguments are taken from ``model.generate``'s keyword arguments
    (``epic_engine``: "auto" | "fast" | "reference"). ``max_new_tokens`` / ``max_length``,
    ``eos_token_id`` and ``pad_token_id`` come from the generation config; its logits processors run
    before every EPIC step and its stopping criteria end sequences.

    transformers hands a callable ``custom_generate`` neither ``tokenizer`` nor ``streamer``, and
    refuses ``stop_strings`` without a tokenizer before the loop starts. So: ``streamer=`` is read
    from transformers' ``generate`` call itself; stop strings are given as ``epic_stop_strings=[...],
    epic_tokenizer=tok`` here, or as the usual ``stop_strings=..., tokenizer=tok`` with the Hub-style
    folder (``custom_generate=CUSTOM_GENERATE_DIR``), which passes them on as those two. ``model_kwargs`` carries the prompt's ``attention_mask`` (Hugging Face
    drops it when it is all ones). Returns the sequences ``[B, T + n]``, or a
    ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True`` (``scores`` / ``logits``: per
    step ``[B, V]``, ``-inf`` in rows of sequences that already finished).
    """
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    config = generation_config
    _refuse(config, model_kwargs)
    attention_mask = model_kwargs.get("attention_mask")
    max_new = config.max_length - input_ids.shape[1] if config is not None else 20
    eos = getattr(config, "_eos_token_tensor", None)
    eos = None if eos is None else [int(e) for e in eos.reshape(-1).tolist()]
    pad = getattr(config, "_pad_token_tensor", None)
    pad = int(pad) if pad is not None and pad.numel() == 1 else (eos[0] if eos else 0)
    streamer = epic_streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())                # as Hugging Face's own loop does first
    else:
        streamer = _caller_streamer()               # Hugging Face already put the prompt
    processors = logits_processor if logits_processor is not None and len(logits_processor) else None
    criteria = list(stopping_criteria) if stopping_criteria is not None else []
    if epic_stop_strings is not None:
        from transformers import StopStringCriteria

        if epic_tokenizer is None:
            raise ValueError("epic_stop_strings needs epic_tokenizer (the model's tokenizer)")
        strings = [epic_stop_strings] if isinstance(epic_stop_strings, str) else list(epic_stop_strings)
        criteria.append(StopStringCriteria(tokenizer=epic_tokenizer, stop_strings=strings))
    if criteria:
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList(criteria)
    else:
        criteria = None
    B = input_ids.shape[0]

    def on_step(step, rows, tokens):
        if streamer is not None:                    # every row, pad where finished (as HF streams)
            full = torch.full((B,), pad, dtype=torch.int64)
            full[rows] = tokens.cpu()               # rows: the sequences still decoding
            streamer.put(full)
    want_scores = bool(getattr(config, "output_scores", False))
    want_logits = bool(getattr(config, "output_logits", False))
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=max(max_new, 0), top_k=None,
                   alpha=epic_alpha, horizon=epic_horizon, rollouts=epic_rollouts, seed=epic_seed,
                   eos_token_id=eos, pad_token_id=pad, rollout_top_k=epic_rollout_top_k,
                   block_size=epic_block_size, engine=epic_engine, logits_processor=processors,
                   stopping_criteria=criteria, on_step=on_step, output_scores=want_scores,
                   output_logits=want_logits)
    if streamer is not None:
        streamer.end()
    if config is not None and getattr(config, "return_dict_in_generate", False):
        return GenerateDecoderOnlyOutput(sequences=out.sequences,
                                         scores=tuple(out.scores) if want_scores else None,
                                         logits=tuple(out.logits) if want_logits else None)
    return out.sequences


def _without_stop_strings(config):
    import copy

    config = copy.deepcopy(config)
    config.stop_strings = None
    return config


def hub_generate(model, inputs=None, generation_config=None, logits_processor=None, stopping_criteria=None,
                 prefix_allowed_tokens_fn=None, synced_gpus=None, assistant_model=None, streamer=None,
                 negative_prompt_ids=None, negative_prompt_attention_mask=None, **kwargs):
    """``custom_generate/generate.py``'s entry point: transformers hands it every ``generate``
    argument; it runs Hugging Face's own preparation with ``custom_generate`` as the decoding loop."""
    if assistant_model is not None:
        raise ValueError("assisted decoding (assistant_model) is not supported by EPIC decoding")
    stop_strings = kwargs.pop("stop_strings", None)
    tokenizer = kwargs.pop("tokenizer", None)
    if stop_strings is None and generation_config is not None:
        stop_strings, generation_config = generation_config.stop_strings, _without_stop_strings(generation_config)
    loop = functools.partial(custom_generate, epic_streamer=streamer, epic_stop_strings=stop_strings,
                             epic_tokenizer=tokenizer)
    return model.generate(inputs=inputs, generation_config=generation_config, logits_processor=logits_processor,
                          stopping_criteria=stopping_criteria, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                          synced_gpus=synced_gpus, negative_prompt_ids=negative_prompt_ids,
                          negative_prompt_attention_mask=negative_prompt_attention_mask, custom_generate=loop,
                          **kwargs)


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
        from .cache import EpicCache

        B, T = input_ids.shape
        if self.prompt_mask is None:
            mask = torch.ones(B, T, dtype=torch.int64)
        else:
            grown = T - self.prompt_mask.shape[1]
            mask = torch.cat([self.prompt_mask.to(torch.int64), torch.ones(B, grown, dtype=torch.int64)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         past_key_values=EpicCache(), use_cache=True)
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
