"""Input checks shared by every entry point. Each raises ``ValueError`` naming the problem and
changes no state (they only read their arguments)."""
from __future__ import annotations

import math
import numbers

import torch

from .philox import MAX_POSITION, MAX_ROLLOUTS, MAX_SEED

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_logits(logits, batch: int | None = None, name: str = "logits", *, empty_batch: bool = False,
                 values: bool = True) -> None:
    """``logits`` must be a floating tensor ``[B, V]`` with no NaN or +inf and a finite entry per row.

    ``empty_batch``: accept ``B = 0`` (the ops do, on every backend, and return empty outputs; the
    samplers do not). ``values=False``: type and shape only, for a caller that learns about bad
    values from its own pass over the data (then calls this again with ``values=True``)."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, vocab], got {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if logits.shape[1] == 0 or (logits.shape[0] == 0 and not empty_batch):
        what = "one column" if empty_batch else "one row and one column"
        raise ValueError(f"{name} must have at least {what}, got {tuple(logits.shape)}")
    if batch is not None and logits.shape[0] != batch:
        raise ValueError(f"{name} has batch size {logits.shape[0]} but the cache / seeds have {batch}")
    if not values:
        return
    if torch.isnan(logits).any():
        rows = torch.isnan(logits).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN (rows {rows[:8]})")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contain +inf; use -inf to remove tokens")
    dead = ~torch.isfinite(logits).any(-1)
    if dead.any():
        raise ValueError(f"{name} rows {dead.nonzero().flatten().tolist()[:8]} have no finite entry "
                         "(truncation removed every token)")


KEY_RANGES = {"seeds": (MAX_SEED, "2**32"), "positions": (MAX_POSITION, "2**31")}


def check_row_keys(rows: int, **keys) -> None:
    """Each of ``keys`` (e.g. ``seeds=``, ``positions=``) must be a 1-D integer tensor of ``rows``
    entries (the per-row noise keys of the row ops), seeds in ``[0, 2**32)`` and positions in
    ``[0, 2**31)`` (the Philox key layout), on every backend alike."""
    for name, t in keys.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point \
                or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor")
        if len(t) != rows:
            raise ValueError(f"{name} has {len(t)} entries for {rows} rows of logits")
        if name in KEY_RANGES and len(t):
            high, text = KEY_RANGES[name]
            if int(t.min()) < 0 or int(t.max()) >= high:
                raise ValueError(f"{name} must lie in [0, {text}), got values in [{int(t.min())}, {int(t.max())}]")


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_config(cfg) -> None:
    """alpha finite; horizon, rollouts, block_size >= 1; rollout_top_k, max_rows None or >= 1."""
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, numbers.Real) or not math.isfinite(cfg.alpha):
        raise ValueError(f"alpha must be a finite real number, got {cfg.alpha!r}")
    check_int(cfg.horizon, "horizon", 1, 64)
    check_int(cfg.rollouts, "rollouts", 1, MAX_ROLLOUTS)
    check_int(cfg.block_size, "block_size", 1)
    if getattr(cfg, "max_rows", None) is not None:
        check_int(cfg.max_rows, "max_rows", 1)
    if cfg.rollout_top_k is not None:
        check_int(cfg.rollout_top_k, "rollout_top_k", 1)


def check_seeds(seeds, batch: int) -> torch.Tensor:
    """An int (row b gets ``seed + b mod 2**32``) or ``batch`` ints in [0, 2**32) -> int64 ``[batch]``."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        check_int(seeds, "seed", 0, MAX_SEED - 1)
        return (int(seeds) + torch.arange(batch, dtype=torch.int64)) % MAX_SEED
    if isinstance(seeds, torch.Tensor):
        if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.dim() != 1:
            raise ValueError(f"seed must be an int or a 1-D integer tensor, got {seeds.dtype} {tuple(seeds.shape)}")
        values = seeds.to(torch.int64).cpu()
    else:
        try:
            values = [check_int(s, "seed", 0, MAX_SEED - 1) for s in seeds]
        except TypeError:
            raise ValueError(f"seed must be an int or a sequence of ints, got {type(seeds).__name__}") from None
        values = torch.tensor(values, dtype=torch.int64)
    if len(values) != batch:
        raise ValueError(f"got {len(values)} seeds for a batch of {batch}")
    if len(values) and (values.min() < 0 or values.max() >= MAX_SEED):
        raise ValueError("seeds must lie in [0, 2**32)")
    return values


def check_logits_meta(logits: torch.Tensor) -> None:
    """The shape/dtype part of ``check_logits`` (``csrc/glue.h`` check_logits), for fake tensors."""
    torch._check(logits.dim() == 2, lambda: f"logits must have shape (N, V), got {tuple(logits.shape)}")
    torch._check(logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 lambda: f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")


def check_processed(scores, like: torch.Tensor, name: str = "logits_processor") -> None:
    """What a logits processor returned must be logits of ``like``'s shape (same rows, same
    vocabulary) with no NaN or +inf and a finite entry per row (``check_logits``)."""
    if not isinstance(scores, torch.Tensor) or scores.shape != like.shape:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} must return logits of shape {tuple(like.shape)} (the logits it was given), "
                         f"got {shape}")
    check_logits(scores, name=f"the logits {name} returned")


def check_vocab(logits: torch.Tensor, model) -> None:
    """``logits [B, V]`` must be as wide as the model's output layer: the bounds use ``log V``."""
    head = getattr(model, "get_output_embeddings", None)
    head = head() if callable(head) else None
    width = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if width is not None and logits.shape[-1] != int(width):
        raise ValueError(f"logits have {logits.shape[-1]} columns but the model's output layer has {int(width)}: "
                         "pass the model's full next-token logits (truncate with -inf, not by slicing)")


def model_vocab(model) -> int | None:
    """The number of token ids ``model`` accepts (its input embedding's rows), or None if unknown."""
    emb = getattr(model, "get_input_embeddings", None)
    emb = emb() if callable(emb) else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        rows = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(rows) if rows is not None else None


def check_input_ids(input_ids, vocab: int | None, name: str = "input_ids") -> None:
    """A non-empty integer tensor ``[batch, length]`` with ids in ``[0, vocab)``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} must be an integer tensor [batch, length], got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{name} must be an integer tensor, got {input_ids.dtype}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sequence of at least one token, got {tuple(input_ids.shape)}")
    if int(input_ids.min()) < 0 or (vocab is not None and int(input_ids.max()) >= vocab):
        raise ValueError(f"{name} must lie in [0, {vocab}) (the model's vocabulary), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")


def check_token_ids(value, name: str, vocab: int | None = None, allow_none: bool = True) -> list[int]:
    """An id, or several: an int, a numpy integer, a 0-d / 1-d integer tensor, or a sequence of
    ints, each in ``[0, vocab)``; returned as a list (None -> [] when ``allow_none``)."""
    if value is None:
        if allow_none:
            return []
        raise ValueError(f"{name} must be a token id, got None")
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() > 1:
            raise ValueError(f"{name} must be integer token ids, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        items = value.reshape(-1).tolist()
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items = [int(value)]
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a token id or a list of token ids, got {value!r}")
    else:
        items = list(value)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must hold integer token ids, got {v!r}")
        if v < 0 or (vocab is not None and v >= vocab):
            raise ValueError(f"{name} {int(v)} is not a token id of this model (vocabulary {vocab})")
        out.append(int(v))
    return out


def check_attention_mask(mask: torch.Tensor, name: str = "attention_mask") -> torch.Tensor:
    """0 and 1 only, a 1 in every row, and left padding (every 0 before the row's first 1): EPIC keys
    each token's noise by its position among the real tokens and appends new tokens after the last
    column, so a right-padded row would put them after its padding. Returns the mask as int64 on the
    CPU."""
    mask = mask.to(torch.int64).cpu()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1")
    if (mask.sum(-1) == 0).any():
        rows = (mask.sum(-1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"{name} rows {rows[:8]} have no 1: a prompt is empty (no real token)")
    late = (mask[:, 1:] < mask[:, :-1]).any(-1)
    if late.any():
        raise ValueError(f"{name} must be left-padded (0s before 1s), but rows {late.nonzero().flatten().tolist()[:8]} "
                         "have a 0 after a 1: the new token would follow the padding. Pad on the left "
                         "(tokenizer.padding_side = 'left')")
    return mask


def check_not_meta(model=None, *, first_only: bool = False, **tensors) -> None:
    """Neither ``model``'s weights nor ``tensors`` may be on the ``meta`` device (shapes without
    values: every model call would return more of them, and the sampler's first read of a value
    would fail). A model that accelerate dispatched (``hf_device_map``) loads its offloaded weights
    itself and is not checked. ``first_only``: look at the model's first parameter only (O(1), for
    a per-step check whose tensors already came from the model), else at every one."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise ValueError(f"{name} is on the meta device (a shape without values); pass a tensor with data, "
                             "on the model's device")
    if model is None or getattr(model, "hf_device_map", None) or not hasattr(model, "named_parameters"):
        return
    if first_only:
        first = next(model.parameters(), None)
        if first is None or not first.is_meta:
            return
    if not any(t.is_meta for t in model.parameters()) and not any(t.is_meta for t in model.buffers()):
        return
    for what, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for pname, p in items:
            if p.is_meta:
                raise ValueError(f"the model's {what} {pname} is on the meta device: its weights were never loaded "
                                 "(e.g. built under torch.device('meta') or init_empty_weights()); load them first "
                                 "(from_pretrained, or to_empty(device=...) then load_state_dict)")


_POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def position_limit(model) -> tuple[int, str] | None:
    """``(positions, config field)`` of a model with learned absolute position embeddings, else None
    (rotary, ALiBi, sinusoidal positions have no table to run past). The table is an ``nn.Embedding``
    named ``wpe`` / ``embed_positions`` / ``position_embeddings`` on the base model (GPT-2, GPT-Neo,
    GPT-BigCode: ``transformer.wpe`` of ``n_positions`` rows, so a larger position id is an
    IndexError inside torch), its ``decoder`` (OPT) or its ``embeddings``; looked up by attribute,
    not by walking every module, since ``sample_step`` asks at every step."""
    base = getattr(model, "base_model", None) or model
    for owner in (base, getattr(base, "decoder", None), getattr(base, "embeddings", None), model):
        for name in _POSITION_TABLES:
            table = getattr(owner, name, None) if isinstance(owner, torch.nn.Module) else None
            if isinstance(table, torch.nn.Embedding):
                config = getattr(model, "config", None)
                field = ("n_positions" if config is not None and "n_positions" in vars(config)
                         else "max_position_embeddings")
                return table.num_embeddings - int(getattr(table, "offset", 0)), field
    return None


def check_position_limit(model, last: int, what: str, fix: str) -> None:
    """``last``: the largest position id that ``what`` would feed ``model``; beyond a learned
    position table it is a ``ValueError`` naming the position, the limit and ``fix``."""
    limit = position_limit(model)
    if limit is not None and last >= limit[0]:
        n, field = limit
        raise ValueError(f"{what} would feed position {last}, but {type(model).__name__} has learned absolute "
                         f"positions only up to {n - 1} ({field}={n}); {fix}")


PREFILL_HINT = ("prefill with a cache that keeps every token, e.g. "
                "model(..., past_key_values=epic_kernels.EpicCache(), use_cache=True)")


def cache_layers(kv) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(keys, values)`` ``[B, kv_heads, L, head_dim]`` of every layer of a transformers cache, read
    correctly or refused with a ``ValueError`` naming the cache and layer type.

    Read: ``DynamicCache`` / ``EpicCache`` layers as they are; ``StaticCache`` layers up to their
    filled length (their empty slots are not tokens); sliding-window layers while they still hold
    every token. Refused: sliding-window layers that dropped their oldest tokens (the prefix is
    incomplete), quantized layers, linear-attention (recurrent state) layers, offloaded caches,
    anything else.
    """
    from transformers.cache_utils import DynamicLayer, StaticLayer

    layers = getattr(kv, "layers", None)
    kind = type(kv).__name__
    if layers is None or not layers:
        raise ValueError(f"kv must be a transformers Cache with per-layer keys/values, got {kind}")
    if getattr(kv, "offloading", False):
        raise ValueError(f"kv is an offloaded {kind}: epic_kernels reads every layer at every model call, "
                         "which offloading would move back and forth; pass a cache without offloading")
    out = []
    for i, layer in enumerate(layers):
        lk = type(layer).__name__
        if getattr(layer, "is_sliding", False):
            seen = getattr(layer, "cumulative_length", None)
            held = layer.keys.shape[2] if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 else None
            if type(layer).__name__ != "DynamicSlidingWindowLayer" or seen is None or held != int(seen):
                raise ValueError(f"layer {i} of this {kind} is a {lk} that has dropped the oldest tokens of "
                                 f"its sliding window ({held} of {seen} kept), so the prefix is incomplete; "
                                 f"{PREFILL_HINT}")
            keys, values = layer.keys, layer.values          # still holds every token: read as it is
        elif type(layer) is StaticLayer:
            n = int(layer.get_seq_length())
            keys, values = (layer.keys[:, :, :n], layer.values[:, :, :n]) if layer.is_initialized else (None, None)
        elif isinstance(layer, DynamicLayer) and (type(layer) is DynamicLayer or type(layer).__name__ == "EpicLayer"):
            keys, values = layer.keys, layer.values
        else:
            raise ValueError(f"layer {i} of this {kind} is a {lk}, which epic_kernels cannot read exactly "
                             f"(supported: DynamicLayer, StaticLayer, EpicLayer); {PREFILL_HINT}")
        if keys is None or keys.dim() != 4 or keys.shape[2] == 0:
            raise ValueError("kv holds no cached keys: run the prefix through the model first")
        out.append((keys, values))
    return out


def check_prefix(kv, seeds, batch: int, attention_mask, model):
    """Check a cache, its mask and seeds against the batch and the model; return (mask, seeds)."""
    layers = cache_layers(kv)
    keys = layers[0][0]
    check_not_meta(kv=keys)
    if keys.shape[0] != batch:
        raise ValueError(f"kv has batch size {keys.shape[0]} but logits have {batch}")
    if model is not None:
        config = getattr(model, "config", None)
        n_layers = getattr(config, "num_hidden_layers", None)
        n_kv = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
        if n_layers is not None and len(layers) != n_layers:
            raise ValueError(f"kv has {len(layers)} layers but the model has {n_layers}: "
                             "it does not belong to this model")
        if n_kv is not None and keys.shape[1] != n_kv:
            raise ValueError(f"kv has {keys.shape[1]} key/value heads but the model has {n_kv}: "
                             "it does not belong to this model")
    length = keys.shape[2]
    if any(k.shape[2] != length for k, _ in layers):
        raise ValueError(f"the layers of kv hold different numbers of tokens "
                         f"({sorted({k.shape[2] for k, _ in layers})}); {PREFILL_HINT}")
    if attention_mask is None:
        mask = torch.ones(batch, length, dtype=torch.int64)
    else:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (batch, length):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask must have shape [{batch}, {length}] (batch, cached length), got {shape}")
        mask = check_attention_mask(attention_mask)
    if mask.sum(-1).max() >= MAX_POSITION:
        raise ValueError("sequence too long for the noise key (positions must be < 2**31)")
    return mask, check_seeds(seeds, batch)
