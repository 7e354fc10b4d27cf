"""The llama.cpp runtime: the engine's runtime interface (``engine.runtime.Runtime``) over one
llama.cpp context with a unified KV cache.

Sequence ids are llama.cpp's way to share KV: a cache cell holds one token's keys and values at one
position and carries the set of sequence ids that see it. So here

* sequence ``b``'s **prefix** (prompt and accepted tokens) is sequence id ``b`` (ids ``0 .. B-1``);
* a **path** (one candidate or rollout of the engine) is a sequence id of its own (``B ..
  n_seq_max - 1``, handed out by ``SeqPool``); it sees its prefix's cells because its id is added to
  them (``llama_memory_seq_cp``: no KV is copied, the cells gain an id) and its own tokens are cells
  that only it (and the paths forked from it) carries;
* ``fork(src, dst, ...)`` adds ``dst`` to ``src``'s cells at the same positions (a fork at any
  token, copying nothing); ``release`` removes a path's id from every cell
  (``llama_memory_seq_rm``), freeing cells no other id holds;
* ``run(rows)`` is one ``llama_decode`` with one token per row (row n in path ``path[n]`` at its
  position), logits of every row over the full vocabulary copied into a torch tensor ``[N, V]``;
* after a step the winner's own cell is added to its prefix (``commit``): the token is not decoded
  again, and the next step's hand-over (prefetch bets, the winner's rollouts) keeps its paths.

**Reproducible logits.** llama.cpp's attention sums over a row's cells in the order they lie in the
cache; without flash attention the sum also depends on where they lie (SIMD lanes, and scores
rounded to f16 before the value product), which moved the embedded model's logits by up to ~0.9
between two rows with the same text. So the context uses flash attention (each visible cell in turn,
masked cells skipped: the result depends only on the order of the row's own cells), in ubatches that
keep it on its per-query kernel (``UBATCH``), and keeps every
row's cells in position order by never letting llama.cpp reuse a cell: a path that is released,
or cut back, leaves its cells to a **graveyard** sequence id that no row reads (``_bury``), so every
new cell lies after all existing ones. A row's logits are then a function of its text alone, the
same as a fresh context decoding that text (``scratch.ScratchModel``), whatever the batch, the
call, the threads or the history. Buried cells cost memory until the cache is full; then the
runtime **rebuilds** it between two decodes (``_rebuild``: clear, decode every active prefix and
every live path's own tokens again; the same cells' values, so nothing changes but the room).

Positions are llama.cpp's, absolute: path ``p`` remembers where its slot 0 sits (``origin``, the
length of its prefix when it was first used) and how many of its own tokens it holds (``n``). A
fork must keep positions (llama.cpp cannot move a cell); every fork the engine makes does, since a
hand-over "one position left" in slot terms is the same absolute position after the prefix grew by
the winner.

Limits (each a ``ValueError`` naming it and the fix): llama.cpp's 256 sequence ids (``n_seq_max``)
hold the B prefixes and every live path; ``n_ctx`` cells hold every prefix and the paths' own
tokens; a call carries at most ``n_batch`` rows (more are split over several decodes).
"""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import torch

from ..engine.runtime import CallRows, OutOfPaths
from .library import load

LLAMA_MAX_SEQ = 256          # llama.cpp's compile-time limit on sequence ids (src/llama-cparams.h)
# ggml's CPU flash attention switches to a tiled kernel (other sums) for ubatches of GGML_FA_TILE_Q = 64
# queries or more, and splits the cells across threads for a ubatch of one query over 512 cells or more;
# both change a row's logits (by up to 1.5 on the embedded model). Ubatches of at most 63 tokens, and
# never of one (a padding token joins it), keep every row on the one per-query kernel.
UBATCH = 63


class SeqPool:
    """The paths' sequence ids, with the slot pool's step protocol (``engine.runtime.SlotPool``):
    ``claim(keep)`` takes the pool for one step and frees every path except ``keep`` (the ones the
    previous step's hand-over names), bumping ``epoch``; ``take`` / ``release`` hand ids out and back."""

    def __init__(self, runtime: "LlamaRuntime", first: int, last: int):
        self.rt, self.first, self.last = runtime, first, last     # ids first .. last - 1
        self.free: list[int] = list(range(first, last))
        self.held: set[int] = set()
        self.epoch = 0
        self.busy = False
        self.shortages = 0             # takes refused (the engine then made room)
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self.last - self.first

    def in_use(self) -> int:
        return len(self.held)

    def claim(self, keep=()) -> bool:
        with self._lock:
            if self.busy:
                return False
            self.busy = True
        keep = {int(i) for i in keep}
        self.release([i for i in sorted(self.held) if i not in keep])
        self.epoch += 1
        return True

    def unclaim(self) -> None:
        self.busy = False

    def take(self, n: int) -> torch.Tensor:
        if n > len(self.free):
            self.shortages += 1
            raise OutOfPaths(
                f"this step needs {self.in_use() + n} live paths but llama.cpp's context has {self.slots} sequence ids "
                f"for paths (n_seq_max={self.rt.n_seq_max}, at most {LLAMA_MAX_SEQ} in llama.cpp, less {self.first} "
                "for the prefixes and 2 for released cells and padding): lower max_rows, top_k, rollouts or the batch "
                "size")
        got, self.free = self.free[:n], self.free[n:]
        self.held.update(got)
        return torch.tensor(got, dtype=torch.int64)

    def release(self, ids) -> None:
        for i in (int(i) for i in ids):
            if i in self.held:
                self.held.discard(i)
                self.rt._drop_path(i)
                self.free.append(i)


class LlamaRuntime:
    """One llama.cpp context for a batch of ``B`` sequences (see the module docstring).

    ``n_ctx``: KV cells; ``n_batch``: most tokens per decode (at least ``n_seq_max``, which llama.cpp
    requires); ``threads``: llama.cpp's threads. ``prefill(prompts)`` decodes the prompts into
    sequence ids ``0 .. B-1`` and returns their last logits; the engine then runs on ``take`` /
    ``release`` / ``fork`` / ``run`` / ``in_use``; ``commit(paths)`` appends each active sequence's
    winner. Sequence id ``n_seq_max - 1`` is the graveyard, ``n_seq_max - 2`` the padding token's;
    the paths get the ids between.
    """

    def __init__(self, model, batch: int, n_ctx: int, n_batch: int = 512, threads: int | None = None,
                 n_seq_max: int = LLAMA_MAX_SEQ):
        if n_seq_max > LLAMA_MAX_SEQ:
            raise ValueError(f"n_seq_max={n_seq_max} is above llama.cpp's limit of {LLAMA_MAX_SEQ} sequence ids")
        if batch < 1:
            raise ValueError("the llama.cpp runtime needs at least one sequence")
        if batch > n_seq_max // 4:
            raise ValueError(f"a batch of {batch} sequences leaves too few of llama.cpp's n_seq_max={n_seq_max} sequence "
                             f"ids (at most {LLAMA_MAX_SEQ}) for EPIC's paths: decode at most {n_seq_max // 4} "
                             "prompts at a time")
        self.model, self.lib = model, load()
        lib = self.lib
        n_batch = max(int(n_batch), int(n_seq_max))     # llama.cpp asserts n_batch >= n_seq_max (outputs buffer)
        p = lib.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = int(n_ctx), n_batch + 1, UBATCH, int(n_seq_max)
        threads = threads or max(1, min(2, _cores()))
        p.n_threads = p.n_threads_batch = int(threads)
        p.kv_unified = True                              # one cache every sequence id shares
        p.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED   # order-only attention sums (module docstring)
        p.no_perf = True
        self.ctx = lib.llama_init_from_model(model.ptr, p)
        if not self.ctx:
            raise ValueError(f"llama.cpp could not make a context of n_ctx={n_ctx} cells, n_seq_max={n_seq_max}, "
                             f"n_batch={n_batch} (out of memory?): lower n_ctx, max_new_tokens or the batch size")
        self.mem = lib.llama_get_memory(self.ctx)
        self.n_ctx, self.n_batch, self.n_seq_max, self.threads = (int(lib.llama_n_ctx(self.ctx)), n_batch,
                                                                  int(n_seq_max), int(threads))
        self.V = model.n_vocab
        self.batch_size = batch
        self._batch = lib.llama_batch_init(self.n_batch + 1, 0, 1)
        self.grave = self.n_seq_max - 1                  # the graveyard: cells no row reads
        self.pad = self.n_seq_max - 2                    # the padding token's sequence id (UBATCH)
        self.texts: list[list[int]] = [[] for _ in range(batch)]   # each prefix's tokens (sequence id b)
        self.active = list(range(batch))                 # the step's sequence index -> prefix id
        n = self.n_seq_max
        self.owner = [-1] * n                            # path -> prefix id it sits after (-1: empty)
        self.origin = [0] * n                            # path -> absolute position of its slot 0
        self.toks: list[list[int]] = [[] for _ in range(n)]   # path -> its own tokens (slots 0, 1, ...)
        self.pool = SeqPool(self, batch, self.pad)
        self.cells = 0                                   # cells written since the cache was last cleared
        self.rebuilds = 0
        self.pads = 0                                    # padding tokens decoded (one buried cell each)
        self.calls = self.rows = self.max_rows_fed = 0   # per step (begin_step resets them)
        self.total_calls = self.total_rows = 0
        self.decode_seconds = self.copy_seconds = 0.0

    # -- the prefixes ---------------------------------------------------------------------------------
    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.texts]

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Decode prompt ``b`` into prefix ``b`` (``n_batch`` tokens per decode); returns the logits
        after each prompt, ``[B, V]``."""
        if len(prompts) != self.batch_size:
            raise ValueError(f"{len(prompts)} prompts for a runtime made for {self.batch_size}")
        need = sum(len(t) for t in prompts)
        if need > self.n_ctx:
            raise ValueError(f"the prompts hold {need} tokens but the context has n_ctx={self.n_ctx} KV cells: "
                             f"shorten the prompts or give n_ctx >= {need} (and room for the decode)")
        if any(self.texts):
            raise ValueError("this runtime's prefixes are already filled")
        out = torch.empty(len(prompts), self.V, dtype=torch.float32)
        for b, toks in enumerate(prompts):
            out[b] = self._decode_text(b, list(toks), 0, logits=True)
            self.texts[b] = list(toks)
        return out

    def positions(self) -> torch.Tensor:
        """Each active sequence's length: the position of the token being sampled."""
        return torch.tensor([len(self.texts[s]) for s in self.active], dtype=torch.int64)

    def commit(self, paths: torch.Tensor) -> None:
        """Append each active sequence's winner: ``paths[i]`` holds it at its slot 0 (the winner's
        depth-1 row), whose cell joins prefix ``active[i]`` (no decode)."""
        for s, p in zip(self.active, paths.tolist()):
            L = len(self.texts[s])
            if self.owner[p] != s or self.origin[p] != L or not self.toks[p]:
                raise RuntimeError(f"path {p} does not hold sequence {s}'s next token at position {L}")
            self.lib.llama_memory_seq_cp(self.mem, p, s, L, L + 1)
            self.texts[s].append(self.toks[p][0])

    def select(self, keep: torch.Tensor) -> None:
        """Keep active sequences ``keep`` (the others finished; their cells go to the graveyard)."""
        keep = set(keep.tolist())
        for i, s in enumerate(self.active):
            if i not in keep:
                self._bury(s, 0)
        self.active = [s for i, s in enumerate(self.active) if i in keep]

    def begin_step(self) -> None:
        """Start counting a new step's calls and rows (``calls``, ``rows``, ``max_rows_fed``)."""
        self.total_calls += self.calls
        self.total_rows += self.rows
        self.calls = self.rows = self.max_rows_fed = 0

    # -- the runtime interface ------------------------------------------------------------------------
    def take(self, n: int) -> torch.Tensor:
        return self.pool.take(n)

    def release(self, ids) -> None:
        self.pool.release(ids)

    def in_use(self) -> int:
        return self.pool.in_use()

    def fork(self, src, dst, length: int, src_start: int = 0, dst_start: int = 0) -> None:
        """Path ``dst[i]``'s tokens ``dst_start ..`` := the (at most) ``length`` tokens of ``src[i]`` from
        ``src_start``: ``dst[i]`` joins those cells. An empty ``dst[i]`` first joins the cells ``src[i]``
        sees before them, which must be its prefix's (so it sits where ``src[i]`` does)."""
        cp = self.lib.llama_memory_seq_cp
        for s, d in zip(torch.as_tensor(src).tolist(), torch.as_tensor(dst).tolist()):
            if self.owner[s] < 0:
                raise RuntimeError(f"fork from path {s}, which holds nothing")
            at = self.origin[s] + src_start                  # absolute position of the first token
            part = self.toks[s][src_start:src_start + length]
            if self.owner[d] < 0:
                o = self.owner[s]
                below = self.toks[s][:src_start]
                if dst_start or at > len(self.texts[o]) or self.texts[o][self.origin[s]:at] != below:
                    raise RuntimeError(f"fork into empty path {d}: what path {s} holds before slot {src_start} is "
                                       "not its prefix")
                cp(self.mem, s, d, 0, at)
                self.owner[d], self.origin[d], self.toks[d] = o, at, []
            elif self.origin[d] + dst_start != at:
                raise RuntimeError(f"fork of path {s} (slot {src_start}, position {at}) into path {d} at slot "
                                   f"{dst_start} (position {self.origin[d] + dst_start}): llama.cpp cannot move KV")
            elif dst_start > len(self.toks[d]):
                raise RuntimeError(f"fork into path {d} at slot {dst_start}, past its {len(self.toks[d])} tokens")
            if len(self.toks[d]) > dst_start:
                self._bury(d, at)
                del self.toks[d][dst_start:]
            if part:
                cp(self.mem, s, d, at, at + len(part))
                self.toks[d].extend(part)

    def run(self, rows: CallRows) -> torch.Tensor:
        """Logits ``[N, V]`` of the rows (one token each), in decodes of at most ``n_batch`` rows."""
        if rows.limit is not None:
            raise ValueError("per-row prefix limits (lookahead_entropy's rows) are not supported by the llama.cpp "
                             "runtime: use the Hugging Face engine for them")
        N = len(rows)
        out = torch.empty(N, self.V, dtype=torch.float32)
        seq, path, fill = rows.seq.tolist(), rows.path.tolist(), rows.fill.tolist()
        tokens, positions = rows.tokens.tolist(), rows.positions.tolist()
        for lo in range(0, N, self.n_batch):
            hi = min(lo + self.n_batch, N)
            for i in range(lo, hi):
                self._extend(path[i], self.active[seq[i]], fill[i], positions[i])
            self._make_room(hi - lo + 1)
            self._fill([(tokens[i], positions[i], path[i], True) for i in range(lo, hi)])
            self._decode(f"a model call of {hi - lo} rows")
            for i in range(lo, hi):
                self.toks[path[i]].append(tokens[i])
            out[lo:hi] = self._logits(hi - lo)
        self.calls += 1
        self.rows += N
        self.max_rows_fed = max(self.max_rows_fed, N)
        return out

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _extend(self, p: int, s: int, fill: int, position: int) -> None:
        """Make path ``p`` of prefix ``s`` ready for its token at slot ``fill`` (absolute ``position``)."""
        if self.owner[p] < 0:
            if fill != 0:
                raise RuntimeError(f"row at slot {fill} of empty path {p}")
            self.lib.llama_memory_seq_cp(self.mem, s, p, 0, len(self.texts[s]))
            self.owner[p], self.origin[p], self.toks[p] = s, len(self.texts[s]), []
        if self.owner[p] != s:
            raise RuntimeError(f"path {p} belongs to sequence {self.owner[p]}, not {s}")
        if self.origin[p] + fill != position:
            raise RuntimeError(f"path {p}: slot {fill} sits at position {self.origin[p] + fill}, not {position}")
        if fill > len(self.toks[p]):
            raise RuntimeError(f"path {p} holds {len(self.toks[p])} tokens; a row cannot append at slot {fill}")
        if len(self.toks[p]) > fill:                     # tokens beyond the fill are stale: bury them
            self._bury(p, position)
            del self.toks[p][fill:]

    def _bury(self, seq: int, p0: int) -> None:
        """Take sequence id ``seq`` off its cells from position ``p0`` on; the graveyard keeps them, so
        llama.cpp never reuses a cell (every new cell lies after the existing ones)."""
        self.lib.llama_memory_seq_cp(self.mem, seq, self.grave, p0, -1)
        self.lib.llama_memory_seq_rm(self.mem, seq, p0, -1)

    def _drop_path(self, p: int) -> None:
        if self.owner[p] >= 0:
            self._bury(p, 0)
        self.owner[p], self.origin[p], self.toks[p] = -1, 0, []

    def _make_room(self, n: int) -> None:
        """Room for ``n`` new cells after the last one: rebuild the cache when it is full."""
        if self.cells + n <= self.n_ctx:
            return
        self._rebuild()
        if self.cells + n > self.n_ctx:
            live = self.cells
            raise ValueError(f"llama.cpp's KV cache (n_ctx={self.n_ctx} cells) holds {live} live cells (the prefixes "
                             f"and {self.in_use()} paths) and has no room for {n} more: give a larger n_ctx, or "
                             "lower max_rows, the batch size or max_new_tokens")

    def _rebuild(self) -> None:
        """Clear the cache and decode every active prefix and every live path's own tokens again: the
        buried cells go, every live cell comes back with the same values, in position order."""
        self.lib.llama_memory_clear(self.mem, True)
        self.cells = 0
        self.rebuilds += 1
        for s in self.active:
            self._decode_text(s, self.texts[s], 0, logits=False)
        for p in sorted(self.pool.held):
            if self.owner[p] >= 0:
                s = self.owner[p]
                self.lib.llama_memory_seq_cp(self.mem, s, p, 0, self.origin[p])
                if self.toks[p]:
                    self._decode_text(p, self.toks[p], self.origin[p], logits=False)

    def _decode_text(self, seq: int, toks: list[int], start: int, logits: bool):
        """Decode ``toks`` into sequence id ``seq`` at positions ``start ..``; the last token's logits."""
        if self.cells + len(toks) + 1 > self.n_ctx:
            raise ValueError(f"{len(toks)} tokens do not fit the {self.n_ctx - self.cells} free KV cells of this "
                             "context (n_ctx): give a larger n_ctx or shorter prompts")
        for lo in range(0, len(toks), self.n_batch):
            part = toks[lo:lo + self.n_batch]
            last = lo + len(part) == len(toks)
            self._fill([(t, start + lo + i, seq, logits and last and i == len(part) - 1) for i, t in enumerate(part)])
            self._decode(f"a text of {len(toks)} tokens")
        return self._logits(1)[0] if logits else None

    def _fill(self, entries) -> None:
        """Write ``(token, position, sequence id, wants logits)`` entries into the batch."""
        b = self._batch
        for i, (tok, pos, sid, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = sid
            b.logits[i] = 1 if out else 0
        b.n_tokens = len(entries)

    def _decode(self, what: str) -> None:
        b = self._batch
        padded = b.n_tokens % UBATCH == 1                # the last ubatch would hold one token: pad it
        if padded:
            i = b.n_tokens
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = 0, 0, 1, 0
            b.seq_id[i][0] = self.pad
            b.n_tokens = i + 1
        n = b.n_tokens
        t0 = time.perf_counter()
        rc = self.lib.llama_decode(self.ctx, self._batch)
        self.decode_seconds += time.perf_counter() - t0
        if rc == 1:
            raise ValueError(f"llama.cpp found no room in its KV cache (n_ctx={self.n_ctx} cells) for {what}: "
                             "give a larger n_ctx, or lower max_new_tokens, the batch size or max_rows")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on {what}")
        self.cells += n
        if padded:
            self._bury(self.pad, 0)
            self.pads += 1

    def _logits(self, n: int) -> torch.Tensor:
        """The last decode's ``n`` output rows, ``[n, V]`` float32 (a copy)."""
        t0 = time.perf_counter()
        ptr = self.lib.llama_get_logits(self.ctx)
        arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n, self.V))
        out = torch.from_numpy(arr.copy())
        self.copy_seconds += time.perf_counter() - t0
        return out

    def state_bytes(self) -> int:
        """Bytes llama.cpp's state writer would save for every occupied cell (live or buried): an
        independent measure of the cells in use (each costs the same bytes of keys and values)."""
        return int(self.lib.llama_state_seq_get_size(self.ctx, -1))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self._batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["LlamaRuntime", "SeqPool", "LLAMA_MAX_SEQ"]
