"""``EpicCache``: a transformers ``Cache`` whose layers append in place, without copying the prefix.

transformers' ``DynamicCache`` concatenates on every token, so a decode of L tokens copies
O(L^2) elements. An ``EpicLayer`` keeps its keys and values in storage with spare capacity
(doubling when full) and exposes views of the filled part, so appending a token copies one token.

Several caches may share one storage: ``EpicCache.fork()`` returns a new cache over the same
storage, and appending to the fork writes beyond the original's length, which the original never
sees (its views end at its own length). That is how ``sample_step`` returns "the given cache plus
the sampled tokens" without modifying the cache it was given and without copying it. If two caches
of one storage both append (a user branching from an older cache), the second one to write finds the
storage's ``tip`` beyond its own length and first copies its own tokens into fresh storage
(copy-on-write), so no cache ever sees another's tokens.

Every mutation bumps ``EpicCache.version``, which lets a prefetch made for one cache state refuse to
apply to any other.
"""
from __future__ import annotations

import itertools

import torch
from transformers.cache_utils import Cache, DynamicLayer

_versions = itertools.count(1)


class _Storage:
    """Keys and values ``[B, kv_heads, capacity, head_dim]`` of one layer; ``tip`` tokens written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, tip: int):
        self.keys, self.values, self.tip = keys, values, tip

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> "_Storage":
        """New storage of ``capacity`` tokens holding a copy of ``keys`` / ``values`` ``[B, H, L, D]``."""
        B, H, L, D = keys.shape
        k = keys.new_empty(B, H, capacity, D)
        v = values.new_empty(B, values.shape[1], capacity, values.shape[3])
        k[:, :, :L].copy_(keys)
        v[:, :, :L].copy_(values)
        return cls(k, v, L)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]


class EpicLayer(DynamicLayer):
    """A ``DynamicLayer`` over growable, shareable storage; ``keys`` / ``values`` are views."""

    def __init__(self, storage: _Storage | None = None, length: int = 0):
        super().__init__()
        self._storage, self._length = storage, length
        if storage is not None:
            self.dtype, self.device = storage.keys.dtype, storage.keys.device
            self.is_initialized = True
            self._refresh()

    def _refresh(self) -> None:
        self.keys = self._storage.keys[:, :, :self._length]
        self.values = self._storage.values[:, :, :self._length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._storage = _Storage.holding(key_states[:, :, :0], value_states[:, :, :0],
                                         max(16, 2 * key_states.shape[2]))
        self._length = 0
        self.is_initialized = True

    def _has_room(self, n: int) -> bool:
        """Can ``n`` tokens be written right after our length, in place (no other fork wrote there,
        and the storage holds them)?"""
        st, L = self._storage, self._length
        return st.tip == L and L + n <= st.capacity

    def _make_room(self, n: int) -> None:
        """Own the storage up to our length (copy-on-write) with room for ``n`` more tokens."""
        st, L = self._storage, self._length
        if not self._has_room(n):
            capacity = st.capacity if L + n <= st.capacity else max(2 * st.capacity, L + n)
            self._storage = _Storage.holding(st.keys[:, :, :L], st.values[:, :, :L], capacity)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states`` / ``value_states`` ``[B, H, n, D]``; return the views of all tokens."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        self._make_room(n)
        st, L = self._storage, self._length
        st.keys[:, :, L:L + n].copy_(key_states)
        st.values[:, :, L:L + n].copy_(value_states)
        self._length = st.tip = L + n
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def fork(self) -> "EpicLayer":
        return EpicLayer(self._storage, self._length) if self.is_initialized else EpicLayer()

    def _replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._storage = _Storage.holding(keys, values, max(16, 2 * keys.shape[2]))
        self._length = keys.shape[2]
        self._refresh()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if self.is_initialized and tokens_to_remove:
            self._length = max(0, self._length + tokens_to_remove)
            self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._replace(self.keys[indices], self.values[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._replace(self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self.batch_select_indices(beam_idx.to(self.device))

    def reset(self) -> None:
        self._storage, self._length = None, 0
        super().reset()

    def offload(self):
        raise NotImplementedError("EpicCache does not offload")


class EpicCache(Cache):
    """A cache of ``EpicLayer`` s (see the module docstring). ``version`` changes on every mutation."""

    def __init__(self, layers: list[EpicLayer] | None = None, num_layers: int | None = None):
        if layers is None:
            layers = [EpicLayer() for _ in range(num_layers or 0)]
        if not layers:
            super().__init__(layer_class_to_replicate=EpicLayer)
        else:
            super().__init__(layers=layers)
        self.version = next(_versions)

    @classmethod
    def from_layers(cls, layers) -> "EpicCache":
        """An ``EpicCache`` holding a copy of ``[(keys, values), ...]`` (each ``[B, H, L, D]``)."""
        out = []
        for k, v in layers:
            out.append(EpicLayer(_Storage.holding(k, v, max(16, 2 * k.shape[2])), k.shape[2]))
        return cls(out)

    @classmethod
    def from_cache(cls, cache) -> "EpicCache":
        """``cache`` itself when it already is an ``EpicCache``, else a copy of its layers (any cache
        ``validate.cache_layers`` reads; others are refused with the reason)."""
        from .validate import cache_layers

        if isinstance(cache, EpicCache):
            return cache
        return cls.from_layers(cache_layers(cache))

    def fork(self) -> "EpicCache":
        """A new cache over the same storage; appending to it leaves this one unchanged."""
        return EpicCache([layer.fork() for layer in self.layers])

    def appended(self, keys: list, values: list) -> "EpicCache":
        """``fork()`` then ``append(keys, values)``, in one pass: what a decoding step does once per
        token. Layers whose storage has room right after their length (the usual case) write the new
        token in place with one batched copy; any other layer goes through ``append``'s path (copy on
        write, growth)."""
        layers, dst, src = [], [], []
        for layer, k, v in zip(self.layers, keys, values):
            if not (layer.is_initialized and layer._has_room(1)):
                new = layer.fork()
                new.update(k.unsqueeze(2), v.unsqueeze(2))
            else:
                st, L = layer._storage, layer._length
                new = EpicLayer.__new__(EpicLayer)
                new.__dict__.update(layer.__dict__)
                new._length = st.tip = L + 1
                dst += (st.keys[:, :, L], st.values[:, :, L])
                src += (k, v)
                new._refresh()
            layers.append(new)
        if dst:
            torch._foreach_copy_(dst, src)
        return EpicCache(layers)

    def append(self, keys: list, values: list) -> None:
        """Append one token per sequence: ``keys[l]`` / ``values[l]`` are ``[B, kv_heads, head_dim]``."""
        for layer, k, v in zip(self.layers, keys, values):
            layer.update(k.unsqueeze(2), v.unsqueeze(2))
        self.version = next(_versions)

    def nbytes(self) -> int:
        """Bytes of storage this cache holds (capacity included)."""
        return sum(layer._storage.keys.nbytes + layer._storage.values.nbytes
                   for layer in self.layers if layer.is_initialized)


def _bumping(name: str):
    """``Cache.<name>``, after giving the cache a new ``version`` (it mutates the cache)."""
    def method(self, *args, **kwargs):
        self.version = next(_versions)
        return getattr(Cache, name)(self, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``Cache.{name}``; the cache gets a new ``version``."
    return method


for _name in ("update", "crop", "batch_select_indices", "batch_repeat_interleave", "reorder_cache", "reset"):
    setattr(EpicCache, _name, _bumping(_name))

__all__ = ["EpicCache", "EpicLayer"]
