"""Tiny models with the Hugging Face call convention, and exact lookahead entropies by enumeration.

``tiny_llama`` is a randomly initialised ``LlamaForCausalLM`` with a vocabulary of 16-64 tokens: small
enough that every rollout path of a short horizon can be enumerated, so the lookahead entropy that the
samplers estimate can also be computed exactly. Tests and benchmarks use it; it is never downloaded.
"""
from __future__ import annotations

import math

import torch

from .reference import policy_log_probs


def tiny_llama(vocab: int = 32, *, seed: int = 0, dtype: torch.dtype = torch.float64,
               hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               init_range: float = 0.3):
    """A small random ``LlamaForCausalLM`` (eval mode) whose weights depend only on ``seed``.

    ``init_range`` is large so next-token distributions range from peaked to flat, which gives the
    lookahead entropies of different candidates a real spread. float64 by default so that a row's
    logits do not depend on which other rows share its batch (exact token-for-token comparisons).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if not 2 <= vocab <= 4096:
        raise ValueError(f"vocab must be in [2, 4096], got {vocab}")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         initializer_range=init_range, bos_token_id=0, eos_token_id=1,
                         pad_token_id=0, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "mixtral", "gpt2", "gpt_neox")


def tiny_model(family: str, vocab: int = 32, *, seed: int = 0, dtype: torch.dtype = torch.float64, **config):
    """A small random causal LM of a transformers family (``FAMILIES``), eval mode, weights from
    ``seed``; ``config`` overrides the family's settings (e.g. ``sliding_window=4`` for Mistral,
    ``attn_logit_softcapping=None`` for Gemma2)."""
    import transformers as T

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.3)
    families = {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, decoder),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, decoder),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(decoder, head_dim=8)),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(decoder, head_dim=8, sliding_window=4)),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM,
                   dict(decoder, head_dim=8, sliding_window=8, attn_logit_softcapping=5.0,
                        final_logit_softcapping=30.0, query_pre_attn_scalar=8)),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(decoder, pad_token_id=0)),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(decoder, num_local_experts=4, num_experts_per_tok=2)),
        "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4, n_positions=4096,
                                                       initializer_range=0.3)),
        "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM,
                     dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=4096, initializer_range=0.3)),
    }
    if family not in families:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    config_cls, model_cls, settings = families[family]
    cfg = config_cls(**{**common, **settings, **config})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
    if hasattr(model, "set_experts_implementation") and getattr(cfg, "num_local_experts", None):
        model.set_experts_implementation("eager")     # the grouped kernels take no float64
    return model.to(dtype).eval()


def tiny_tokenizer(vocab: int = 32):
    """A character-level Hugging Face tokenizer for the tiny models: token ``i`` is the character
    ``chr(65 + i)`` (``"A"`` is 0, also padding and beginning of sequence; ``"B"`` is 1, the end of
    sequence), so calibration on strings, the command-line tools, streamers and ``stop_strings`` can be
    tested without a downloaded tokenizer. Characters outside the vocabulary map to 0."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if not 2 <= vocab <= len(TINY_CHARS):
        raise ValueError(f"vocab must be in [2, {len(TINY_CHARS)}], got {vocab}")
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(TINY_CHARS[:vocab])}, unk_token=TINY_CHARS[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    c = TINY_CHARS
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=c[0], eos_token=c[1], pad_token=c[0], unk_token=c[0])


TINY_CHARS = "".join(chr(65 + i) for i in range(64))


@torch.no_grad()
def next_log_probs(model, ids: torch.Tensor, rollout_top_k: int | None = None) -> torch.Tensor:
    """Rollout-policy log-probabilities ``[N, V]`` after each full (unpadded) prefix ``ids [N, T]``."""
    logits = model(input_ids=ids).logits[:, -1, :]
    return policy_log_probs(logits, rollout_top_k)


@torch.no_grad()
def exact_lookahead_entropy(model, prefix: list[int], candidate: int, horizon: int,
                            rollout_top_k: int | None = None) -> float:
    """Exact ``H_{t:t+k}(candidate)`` (paper eq. 4) by enumerating every rollout path.

    Sums, over depths ``j = 1..horizon``, the expected entropy of the rollout policy after
    ``prefix + [candidate] + y_{1..j-1}``, the expectation taken over ``y`` drawn from the policy.
    Cost grows as ``V ** (horizon - 1)``: use a small vocabulary.
    """
    paths = [([candidate], 0.0)]             # (suffix, log-probability of the rollout tokens)
    total = 0.0
    for depth in range(horizon):
        ids = torch.tensor([prefix + suffix for suffix, _ in paths])
        logp = next_log_probs(model, ids, rollout_top_k)
        p = logp.exp()
        ent = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
        weights = torch.tensor([math.exp(lw) for _, lw in paths], dtype=ent.dtype)
        total += float((weights * ent).sum())
        if depth + 1 < horizon:
            paths = [(suffix + [v], lw + float(logp[n, v]))
                     for n, (suffix, lw) in enumerate(paths)
                     for v in range(logp.shape[-1]) if p[n, v] > 0]
    return total


def exact_lookahead_entropies(model, prefix: list[int], horizon: int,
                              rollout_top_k: int | None = None) -> torch.Tensor:
    """``exact_lookahead_entropy`` for every vocabulary entry, as a float64 tensor ``[V]``."""
    vocab = model.config.vocab_size
    return torch.tensor([exact_lookahead_entropy(model, prefix, c, horizon, rollout_top_k)
                         for c in range(vocab)], dtype=torch.float64)


def random_prompts(vocab: int, lengths, *, seed: int = 0) -> list[list[int]]:
    """Deterministic random token prompts of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=gen).tolist() for n in lengths]




@torch.no_grad()
def prefill(model, prompts: list[list[int]]):
    """Run left-padded prompts through ``model``.

    Returns ``(logits [B, V], cache, attention_mask [B, L])``: the next-token logits after each
    prompt, the model's cache and the padding mask of that cache (0 = left padding).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be non-empty lists of token ids")
    length = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (length - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    return out.logits[:, -1, :], out.past_key_values, mask


def left_padded(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, max length]`` of token lists, left-padded with ``pad_id``."""
    L = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (L - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def require_extension(*ops: str) -> None:
    """Raise unless the C++ extension is built (with ``ops``, if named). The test suite's command,
    ``make test``, always builds it, so a test module of the compiled ops fails rather than skips
    when it is missing."""
    from . import _ext

    missing = [] if not _ext.available() else [op for op in ops if not hasattr(_ext.ops(), op)]
    if not _ext.available() or missing:
        what = f"without {', '.join(missing)}" if missing else f"not built ({_ext.error()})"
        raise RuntimeError(f"the C++ extension is {what}; {_ext.BUILD_HINT} (`make test` does this)")


__all__ = ["tiny_llama", "tiny_model", "FAMILIES", "tiny_tokenizer", "TINY_CHARS", "prefill", "next_log_probs", "exact_lookahead_entropy",
           "exact_lookahead_entropies", "random_prompts", "left_padded", "require_extension"]
