"""Fork attention's glue to transformers: many rollout rows share their sequence's prefix KV without
copying it.

Registered with transformers' attention interface as ``"epic_fork"``; the engine routes only its own
forward calls to it (``fork_mode``), per thread, without changing the model (see ``fork_mode``).
Each row n of such a call belongs to sequence
``seq[n]`` and owns slot ``slot[n]`` of a small pool (``runtime.SlotPool``) holding its suffix (candidate
token plus rollout tokens: up to ``horizon`` of them, ``horizon + 2`` with prefetch). The attention
itself is the op ``epic_kernels.ops.fork_attention`` (contract, reference implementation, C++
kernel and dispatch there); ``ForkBatch.build`` picks its backend once per model call.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from dataclasses import dataclass

import torch

from ..ops.dispatch import choose
from ..ops.fork_attention import SOFTCAP_BACKENDS, ForkAux, fork_attention_backend, fork_attention_impl, fork_aux

ATTENTION_NAME = "epic_fork"
# per thread: ``batch``, the ForkBatch of the fork call in flight, and ``routed``, the ids of the
# configs whose attention implementation reads as ATTENTION_NAME in this thread during that call
_local = threading.local()
_lock = threading.Lock()       # registration and the config classes' one-time routing
_routed_classes: set = set()   # config classes whose _attn_implementation answers per thread
_model_configs = weakref.WeakKeyDictionary()   # model -> (its config, the configs _configs found, their ids)


@dataclass
class ForkBatch:
    """The rows of one forward call (set as the thread's active batch by ``fork_mode``): the
    arguments of ``ops.fork_attention`` that every layer shares, and its backend."""

    prefix_layers: list        # per layer (keys, values) [B, kv_heads, L, head_dim]
    prefix_valid: torch.Tensor  # bool [B, L]: 1 on real tokens
    pool: SlotPool
    seq: torch.Tensor          # int64 [N]
    slot: torch.Tensor         # int64 [N]
    fill: torch.Tensor         # int64 [N]: where the row's new token goes in its slot
    row_limit: torch.Tensor | None = None   # int64 [N]: row n sees prefix positions < row_limit[n]
    backend: str = "reference"              # ops.fork_attention.fork_attention_backend's choice
    aux: ForkAux | None = None              # the reference's auxiliary tensors (reference only)
    max_position: int = 0                   # the largest position id of the call's rows
    calls: int = 0                          # layer calls made through fork attention (checked)

    @classmethod
    def build(cls, prefix, pool: SlotPool, seq, slot, fill, dtype, row_limit=None,
              backend: str | None = None, max_position: int = 0) -> "ForkBatch":
        """``row_limit [N]`` (optional): row n sees only the first ``row_limit[n]`` prefix positions,
        so rows that share one sequence's KV can fork from different prefixes of it. The backend
        (``backend``, else $EPIC_KERNELS_BACKEND, else by device and dtype) is chosen here, once per
        model call, and the reference's auxiliary tensors are built once for every layer."""
        device = prefix.layers[0][0].device
        which = fork_attention_backend(device, dtype, backend)
        valid = prefix.mask.to(device).bool().contiguous()
        limit = None if row_limit is None else row_limit.to(torch.int64).contiguous()
        aux = None
        if which == "reference":
            aux = fork_aux(valid, seq, fill, limit, dtype, choose(seq.device, backend, "fork_layout"), device)
        return cls(prefix.layers, valid, pool, seq, slot, fill, limit, which, aux, int(max_position))

    def reference_aux(self, dtype) -> ForkAux:
        """The reference's auxiliary tensors, built on first need (a layer the C++ kernel cannot run)."""
        if self.aux is None:
            device = self.prefix_layers[0][0].device
            self.aux = fork_aux(self.prefix_valid, self.seq, self.fill, self.row_limit, dtype,
                                choose(self.seq.device, None, "fork_layout"), device)
        return self.aux


def fork_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function; ``query [N, H, 1, D]``, ``key/value [N, Hkv, 1, D]``.

    Writes each row's key / value into its slot of the pool and returns ``(out [N, 1, H, D], None)``
    by ``ops.fork_attention.fork_attention_impl`` on the batch's backend.
    """
    fb: ForkBatch | None = getattr(_local, "batch", None)
    if fb is None:
        raise RuntimeError("fork attention was called outside the fast engine's model calls (no fork call is "
                           "in flight in this thread): it runs only inside engine.attention.fork_mode, which "
                           "sets up the rows it attends over; do not set attn_implementation='epic_fork' yourself")
    layer = module.layer_idx
    fb.calls += 1
    window = kwargs.get("sliding_window")
    if window is not None and fb.max_position >= window:
        raise RuntimeError(f"fork attention: layer {layer} has a sliding window of {window} tokens and this call "
                           f"reaches position {fb.max_position}; the engine should have used the reference engine")
    if kwargs.get("s_aux") is not None:
        raise RuntimeError(f"fork attention: layer {layer} has attention sinks, which fork attention does not "
                           "implement; the engine should have used the reference engine")
    if dropout:
        raise RuntimeError("fork attention runs in eval mode only (dropout > 0)")
    softcap = kwargs.get("softcap")
    backend, aux = fb.backend, fb.aux
    if softcap is not None and backend not in SOFTCAP_BACKENDS:      # the C++ kernel has no soft-capping
        backend, aux = "reference", fb.reference_aux(query.dtype)
    K, V = fb.prefix_layers[layer]
    out = fork_attention_impl(query, key, value, fb.pool.keys[layer], fb.pool.values[layer], K, V,
                              fb.prefix_valid, fb.seq, fb.slot, fb.fill, fb.row_limit, scaling, backend, aux, softcap)
    return out, None


class _RoutedAttnImplementation:
    """Replaces a config class's ``_attn_implementation`` property (transformers 5 reads it in every
    attention layer's forward, ``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
    ...)``, and in mask creation): a config that ``fork_mode`` routes *in the reading thread* reads
    as ``"epic_fork"``; every other read, and every write, is the original property's."""

    def __init__(self, prop: property):
        self.prop = prop

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        routed = getattr(_local, "routed", None)
        if routed and id(obj) in routed:
            return ATTENTION_NAME
        return self.prop.__get__(obj, owner)

    def __set__(self, obj, value):
        self.prop.__set__(obj, value)


def _route_class(cls) -> None:
    """Install ``_RoutedAttnImplementation`` on config class ``cls`` once (under ``_lock``)."""
    if isinstance(cls.__dict__.get("_attn_implementation"), _RoutedAttnImplementation):
        return
    prop = inspect.getattr_static(cls, "_attn_implementation", None)
    if isinstance(prop, _RoutedAttnImplementation):          # inherited from a routed class
        return
    if not isinstance(prop, property):
        raise RuntimeError(f"{cls.__name__}._attn_implementation is not transformers' property (got "
                           f"{type(prop).__name__}), so fork attention cannot be routed per thread; use "
                           "engine='reference'")
    cls._attn_implementation = _RoutedAttnImplementation(prop)


def _configs(model) -> tuple[list, frozenset]:
    """The configs whose attention implementation a forward of ``model`` reads: the model's, its
    sub-configs (recursively, as transformers' setter propagates), each attention layer's own; and
    their ids. Found once per model (walking the layers costs tens of microseconds, and every fork
    call asks) and found again when ``model.config`` is another object; a layer whose config was
    swapped alone would bypass fork attention, which the evaluator's per-call check of every layer
    turns into an error."""
    known = _model_configs.get(model)
    if known is not None and known[0] is model.config:
        return known[1], known[2]
    out, todo = [], [model.config] + [getattr(a, "config", None) for a in attention_layers(model) or []]
    while todo:
        cfg = todo.pop()
        if cfg is None or any(c is cfg for c in out):
            continue
        out.append(cfg)
        todo += [getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", None) or ()]
    ids = frozenset(id(c) for c in out)
    with _lock:
        _model_configs[model] = (model.config, out, ids)
    return out, ids


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, fork_attention)


@contextlib.contextmanager
def fork_mode(model, batch: ForkBatch):
    """Run ``model``'s forward calls made *in this thread* with fork attention over ``batch`` for the
    duration of the block.

    Nothing of the model changes: its configs' ``_attn_implementation`` reads as ``"epic_fork"`` only
    in this thread while the block runs (``_RoutedAttnImplementation``, installed once per config
    class, answers per thread), so other threads' forwards and fork calls on the same model, and
    everything after an exception, see the model as it is. Blocks nest (the outer routing and batch
    come back at exit)."""
    configs, ids = _configs(model)
    if not _routed_classes.issuperset(type(c) for c in configs):
        with _lock:
            if not getattr(_register, "done", False):
                _register()
                _register.done = True
            for cfg in configs:
                _route_class(type(cfg))
                _routed_classes.add(type(cfg))
    previous = getattr(_local, "routed", None), getattr(_local, "batch", None)
    _local.routed = ids if not previous[0] else previous[0] | ids
    _local.batch = batch
    try:
        yield
    finally:
        _local.routed, _local.batch = previous


def attention_layers(model) -> list | None:
    """The decoder layers' attention modules, when the model has the ``model.layers[i].self_attn``
    layout of transformers' decoder-only families (Llama, Qwen, Mistral, Gemma, Phi, MoE ...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return None
    attns = [getattr(layer, "self_attn", None) for layer in layers]
    if any(a is None or not hasattr(a, "layer_idx") for a in attns):
        return None
    return attns


def sliding_windows(model) -> list[int | None]:
    """Each attention layer's sliding window (None: full attention), read from the layer itself
    (its ``sliding_window``) or, when the layer has no such attribute, from its config."""
    out = []
    for attn in attention_layers(model) or []:
        if hasattr(attn, "sliding_window"):
            out.append(attn.sliding_window)
        else:
            cfg = getattr(attn, "config", None) or model.config
            out.append(getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None)
    return out


def fork_refusal(model, max_position: int | None = None) -> str | None:
    """Why the fast engine cannot run ``model`` exactly (None: it can), decided from the attention
    layers' own configuration. ``max_position``: the largest position id a step's rows will reach
    (a sliding window that this never reaches does not bind, so it does not refuse)."""
    attns = attention_layers(model)
    if attns is None or not hasattr(model.config, "_attn_implementation"):
        return (f"{type(model).__name__} does not have transformers' model.layers[i].self_attn layout, through "
                "which fork attention is installed")
    for i, attn in enumerate(attns):
        if getattr(attn, "sinks", None) is not None:
            return f"layer {i} has attention sinks, which fork attention does not implement"
    windows = [w for w in sliding_windows(model) if w is not None]
    if windows:
        if max_position is None:
            return f"its layers have sliding windows (of {min(windows)} tokens) and the context length is not known"
        if max_position >= min(windows):
            return (f"its sliding window of {min(windows)} tokens binds at position {max_position}, and fork "
                    "attention does not implement sliding windows")
    return None


def supports_fork(model, max_position: int | None = None) -> bool:
    """True when the fast engine runs ``model`` exactly (``fork_refusal`` gives the reason otherwise)."""
    return fork_refusal(model, max_position) is None
