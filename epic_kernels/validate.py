"""Input checks shared by every entry point. Each raises ``ValueError`` naming the problem and
changes no state (they only read their arguments)."""
from __future__ import annotations

import math
import numbers

import torch

from .philox import MAX_POSITION, MAX_ROLLOUTS, MAX_SEED

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_logits(logits, batch: int | None = None, name: str = "logits", *, empty_batch: bool = False) -> None:
    """``logits`` must be a floating tensor ``[B, V]`` with no NaN or +inf and a finite entry per row.

    ``empty_batch``: accept ``B = 0`` (the ops do, on every backend, and return empty outputs; the
    samplers do not)."""
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
    if torch.isnan(logits).any():
        rows = torch.isnan(logits).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN (rows {rows[:8]})")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contain +inf; use -inf to remove tokens")
    dead = ~torch.isfinite(logits).any(-1)
    if dead.any():
        raise ValueError(f"{name} rows {dead.nonzero().flatten().tolist()[:8]} have no finite entry "
                         "(truncation removed every token)")


def check_row_keys(rows: int, **keys) -> None:
    """Each of ``keys`` (e.g. ``seeds=``, ``positions=``) must be a 1-D integer tensor of ``rows``
    entries (the per-row noise keys of the row ops)."""
    for name, t in keys.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point \
                or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor")
        if len(t) != rows:
            raise ValueError(f"{name} has {len(t)} entries for {rows} rows of logits")


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_config(cfg) -> None:
    """alpha finite; horizon, rollouts, block_size >= 1; rollout_top_k None or >= 1."""
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, numbers.Real) or not math.isfinite(cfg.alpha):
        raise ValueError(f"alpha must be a finite real number, got {cfg.alpha!r}")
    check_int(cfg.horizon, "horizon", 1, 64)
    check_int(cfg.rollouts, "rollouts", 1, MAX_ROLLOUTS)
    check_int(cfg.block_size, "block_size", 1)
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


def check_prefix(kv, seeds, batch: int, attention_mask, model):
    """Check a cache, its mask and seeds against the batch and the model; return (mask, seeds)."""
    layers = getattr(kv, "layers", None)
    if layers is None or not layers or not all(hasattr(layer, "keys") for layer in layers):
        raise ValueError(f"kv must be a transformers Cache with per-layer keys/values, got {type(kv).__name__}")
    keys = layers[0].keys
    if keys is None or keys.dim() != 4:
        raise ValueError("kv holds no cached keys: run the prefix through the model first")
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
    if attention_mask is None:
        mask = torch.ones(batch, length, dtype=torch.int64)
    else:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (batch, length):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask must have shape [{batch}, {length}] (batch, cached length), got {shape}")
        mask = attention_mask.to(torch.int64).cpu()
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 and 1")
        if (mask.sum(-1) == 0).any():
            raise ValueError("attention_mask has a row with no real token (empty prefix)")
    if mask.sum(-1).max() >= MAX_POSITION:
        raise ValueError("sequence too long for the noise key (positions must be < 2**31)")
    return mask, check_seeds(seeds, batch)
