"""The runtime interface: the one place where the engine touches the model.

The search, the candidate bookkeeping (``state.py``), prefetch and cross-step reuse are
runtime-agnostic. What they need from a runtime is a set of **KV paths** and one batched call:

* a *path* is a short suffix of KV owned by one (candidate, rollout): it sits after its sequence's
  prefix (which the runtime reads in place and never copies) and grows by one token per call;
* ``take(n)`` hands out ``n`` empty paths (int64 ids), ``release(ids)`` frees them;
* ``fork(src, dst, length, src_start=0, dst_start=0)`` makes path ``dst[i]``'s tokens
  ``dst_start ..`` the ``length`` tokens of path ``src[i]`` from ``src_start`` on (a rollout forking
  from its candidate's path, a bet's paths starting with the bet's token, an evaluation handed
  from one step to the next moving one position left);
* paths outlive their step: a step hands the next one path ids (``prefetch.Prefetched``), and the
  next step claims the runtime's storage keeping exactly those (``SlotPool.claim``);
* ``run(rows)`` runs one model call over ``Rows`` (sequence, path, fill, token, position, limit):
  row n appends ``token[n]`` at position ``fill[n]`` of path ``path[n]`` and returns its logits
  ``[N, V]`` (after the prefix of sequence ``seq[n]`` — its first ``limit[n]`` tokens when given —
  and the path's first ``fill[n]`` tokens).

``ForkRuntime`` implements it with Hugging Face transformers and fork attention: a path is a slot of
``SlotPool`` (every layer's keys and values in one tensor, so a fork or a read is one indexing op
whatever the number of layers), and a call is one forward with the attention switched to the
``ops.fork_attention`` op for the calling thread (``attention.fork_mode``). A second runtime
(llama.cpp sequence ids, a paged GPU cache) implements the same few methods and gets the search,
prefetch, reuse and bounded memory unchanged; ``docs/engine.md`` ("The runtime interface") shows
the skeleton.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch

from ..ops.dispatch import choose
from ..ops.fork_slots import fork_slots_impl
from .attention import ForkBatch, fork_mode


@dataclass(frozen=True)
class CallRows:
    """One model call's rows (int64 ``[N]`` each): row n appends ``tokens[n]`` at slot position
    ``fill[n]`` of path ``path[n]``, at model position ``positions[n]``, after sequence ``seq[n]``'s
    prefix (its first ``limit[n]`` tokens when ``limit`` is given)."""

    seq: torch.Tensor
    path: torch.Tensor
    fill: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor
    limit: torch.Tensor | None = None

    FIELDS: ClassVar[tuple] = ("seq", "path", "fill", "tokens", "positions")

    def __len__(self) -> int:
        return len(self.tokens)

    def with_limit(self, limit: torch.Tensor | None) -> "CallRows":
        return replace(self, limit=limit)

    def cat(self, others) -> "CallRows":
        """These rows, then ``others``' (a list of ``CallRows`` without limits)."""
        if not others:
            return self
        if self.limit is not None:
            raise ValueError("rows with per-row prefix limits cannot share a call with other rows")
        return CallRows(*(torch.cat([getattr(self, f)] + [getattr(o, f) for o in others]) for f in self.FIELDS))

    def part(self, lo: int, hi: int) -> "CallRows":
        """Rows ``lo .. hi - 1``."""
        return CallRows(*(getattr(self, f)[lo:hi] for f in self.FIELDS),
                        None if self.limit is None else self.limit[lo:hi])


class OutOfPaths(ValueError):
    """A runtime with a fixed number of paths (llama.cpp's sequence ids) has none left for ``take``.
    The engine then drops prefetch bets, and then gives back paths of candidates it can evaluate
    again (``CandidateState.make_room``), before it lets the error through (its message names the
    limit and the fix). ``ForkRuntime`` grows its pool instead and never raises it."""


class Runtime(Protocol):
    """What the engine asks of a model runtime (see the module docstring). ``take`` may raise
    ``OutOfPaths``."""

    def take(self, n: int) -> torch.Tensor: ...
    def release(self, ids) -> None: ...
    def fork(self, src: torch.Tensor, dst: torch.Tensor, length: int, src_start: int = 0,
             dst_start: int = 0) -> None: ...
    def run(self, rows: CallRows) -> torch.Tensor: ...
    def in_use(self) -> int: ...


class SlotPool:
    """Suffix storage of every path: one tensor ``[layers, 2 (keys, values), slots, kv_heads,
    slot_len, head_dim]``; ``keys[l]`` / ``values[l]`` are contiguous views of layer ``l``."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype, device=None):
        self.shape = (kv_heads, slot_len, head_dim)
        self.n_layers = n_layers
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.backend = choose(self.device, None, "fork_slots")
        self._set(torch.empty(n_layers, 2, 0, *self.shape, dtype=dtype, device=self.device))
        self.used = 0
        self.free: list[int] = []
        self.epoch = 0                 # bumped by every claim: a hand-over is valid for one epoch
        self.busy = False              # claimed by a running step
        self._lock = threading.Lock()

    def _set(self, storage: torch.Tensor) -> None:
        self.storage = storage
        self.keys = [storage[i, 0] for i in range(self.n_layers)]
        self.values = [storage[i, 1] for i in range(self.n_layers)]

    @property
    def slots(self) -> int:
        return self.storage.shape[2]

    def in_use(self) -> int:
        return self.used - len(self.free)

    def claim(self, keep=()) -> bool:
        """Take the pool for one step: every slot is free again except ``keep`` (the slots a hand-over
        from the previous step refers to), and the epoch moves on. False (nothing changed) if another
        step holds it. Stale contents of freed slots are finite and lie beyond every new row's fill,
        so they are masked out."""
        with self._lock:
            if self.busy:
                return False
            self.busy = True
        keep = {int(i) for i in keep}
        self.used = max(keep) + 1 if keep else 0
        self.free = [i for i in range(self.used) if i not in keep]
        self.epoch += 1
        return True

    def unclaim(self) -> None:
        self.busy = False

    def fits(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype, device=None) -> bool:
        device = torch.device("cpu") if device is None else torch.device(device)
        return (self.n_layers == n_layers and self.shape[0] == kv_heads and self.shape[2] == head_dim
                and self.shape[1] >= slot_len and self.dtype == dtype and self.device == device)

    def take(self, n: int) -> torch.Tensor:
        """Hand out ``n`` unused slots (released ones first, then new ones, growing the pool if
        needed); returns their ids, int64 ``[n]``."""
        got = self.free[:n]
        self.free = self.free[n:]
        rest = n - len(got)
        if rest:
            got = got + list(range(self.used, self.used + rest))
            self.used += rest
            self.reserve(self.used)
        return torch.tensor(got, dtype=torch.int64)

    def release(self, ids) -> None:
        """Give slots back for reuse in this step (stale contents lie beyond every new row's fill)."""
        self.free.extend(int(i) for i in ids)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` slots (contents of existing slots kept). New slots are zeroed: tokens
        beyond a row's fill are masked out, and a masked score must multiply a finite value."""
        if n <= self.slots:
            return
        n = max(n, 2 * self.slots)
        old = self.storage
        out = torch.empty(self.n_layers, 2, n, *self.shape, dtype=self.dtype, device=self.device)
        out[:, :, : old.shape[2]].copy_(old)
        out[:, :, old.shape[2]:].zero_()               # only the new slots need zeroing
        self._set(out)

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor, length: int, src_start: int = 0,
                   dst_start: int = 0) -> None:
        """Slot ``dst[i]``'s tokens ``dst_start ..`` := the ``length`` tokens of slot ``src[i]`` from
        ``src_start`` on."""
        if len(dst) and length > 0:
            fork_slots_impl(self.storage, src, dst, length, src_start, dst_start, self.backend)

    def read(self, ids: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """Tokens ``start .. start + length - 1`` of slots ``ids``: ``[layers, 2, n, kv_heads, length,
        head_dim]`` (a copy; for tests and tools)."""
        return self.storage[:, :, ids, :, start:start + length]

    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()


class ForkRuntime:
    """The Hugging Face runtime: paths are slots of ``pool``; a call is one forward of ``model``
    with fork attention over ``prefix`` (read in place) and the rows' slots."""

    def __init__(self, model, prefix, pool: SlotPool, max_rows: int | None = None):
        self.model, self.prefix, self.pool = model, prefix, pool
        self.max_rows = max_rows or (1 << 62)
        self.calls = self.rows = self.max_rows_fed = 0

    @classmethod
    def for_step(cls, model, prefix, slot_len: int, pool: SlotPool | None = None,
                 max_rows: int | None = None) -> "ForkRuntime":
        """A runtime over ``prefix`` on ``pool`` when its geometry fits (the caller claimed it),
        else on a new pool."""
        keys = prefix.layers[0][0]
        geometry = (len(prefix.layers), keys.shape[1], keys.shape[3], slot_len, keys.dtype, keys.device)
        if pool is None or not pool.fits(*geometry):
            pool = SlotPool(*geometry)
        return cls(model, prefix, pool, max_rows)

    # -- paths ------------------------------------------------------------------------------------
    def take(self, n: int) -> torch.Tensor:
        return self.pool.take(n)

    def release(self, ids) -> None:
        self.pool.release(ids)

    def fork(self, src, dst, length: int, src_start: int = 0, dst_start: int = 0) -> None:
        self.pool.copy_slots(src, dst, length, src_start, dst_start)

    def in_use(self) -> int:
        return self.pool.in_use()

    def token_kv(self, ids, at: int):
        """Per layer ``(keys, values)`` ``[n, kv_heads, head_dim]`` of token ``at`` of slots ``ids``."""
        views = self.pool.storage[:, :, ids, :, at].flatten(0, 1).unbind(0)    # (layer, k/v) in order
        return list(views[0::2]), list(views[1::2])

    # -- one model call ---------------------------------------------------------------------------
    def run(self, rows: CallRows) -> torch.Tensor:
        """Logits ``[N, V]`` of the rows, in forwards of at most ``max_rows`` rows each (rows are
        independent: each reads the prefix and its own slot only)."""
        n, c = len(rows), self.max_rows
        if n <= c:
            return self._forward(rows)
        return torch.cat([self._forward(rows.part(i, i + c)) for i in range(0, n, c)])

    @torch.no_grad()
    def _forward(self, rows: CallRows) -> torch.Tensor:
        fb = ForkBatch.build(self.prefix, self.pool, rows.seq, rows.path, rows.fill, self.pool.dtype, rows.limit,
                             max_position=int(rows.positions.max()))
        device = self.prefix.device
        with fork_mode(self.model, fb):
            out = self.model(input_ids=rows.tokens.view(-1, 1).to(device),
                             position_ids=rows.positions.view(-1, 1).to(device), use_cache=False)
        if fb.calls != len(self.prefix.layers):     # every layer must have attended through the fork
            raise RuntimeError(f"{type(self.model).__name__}: {fb.calls} of its {len(self.prefix.layers)} attention "
                               "layers went through fork attention; the fast engine cannot run this model")
        self.calls += 1
        self.rows += len(rows)
        self.max_rows_fed = max(self.max_rows_fed, len(rows))
        return out.logits[:, -1, :]


__all__ = ["CallRows", "OutOfPaths", "Runtime", "SlotPool", "ForkRuntime"]
