"""EPIC decoding over a serving engine: the step written once, for every transport.

Every sequence of the batch has its own step state (``metadata.SequenceState``): its root logprobs,
its search (``engine.search.Search`` over the library's candidate manager and a
``evaluator.RequestEvaluator``), what it cost. A *round* gathers what every active sequence needs
next (a root, depth-1 or rollout requests) and sends it to the engine as one batch; the responses
go back to their sequences, whose searches then advance. Sequences are independent, so a sequence
that finished its step starts the next one in the next round while others still refine theirs,
and a sequence's tokens never depend on the rest of the batch.

Exact parts are the library's: candidate scores ``z`` from the keyed Philox step noise on the
truncated root logprobs (the ``gumbel_topk_prune`` op, equal to ``reference.perturbed_scores``),
the admissible bounds from ``log rollout_top_k`` (``core.admissible_bound``), the candidate
manager's pruning, best-first blocks, adaptive horizon and stopping rule, and the scores' formula.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch

from .. import defaults
from ..core import EpicConfig, admissible_bound, window
from ..engine.search import Search
from ..ops.candidate_manager import make_manager
from ..ops.dispatch import choose
from ..ops.gumbel_topk_prune import gumbel_topk_prune_impl
from ..reference.primitives import rb_estimate, score
from ..validate import check_config, check_int, check_seeds
from .evaluator import Refinement, RequestEvaluator
from .metadata import Root, SequenceState, StepRecord
from .transport import EngineInfo, Request, ServingError


def _manager(ids, z, alpha, horizon, bound, block_size, backend):
    """The library's candidate manager for one sequence's survivors (C++ when built)."""
    offsets = torch.tensor([0, len(ids)], dtype=torch.int64)
    return make_manager(offsets, ids, z, alpha, horizon, bound, block_size, backend)


class _Exhaustive:
    """The oracle on the engine: every candidate to depth 1, then every one to the full horizon;
    ``argmax z - alpha H`` (lower id on ties). Same requests as the lazy search, no pruning."""

    def __init__(self, ev, z, alpha, horizon):
        self.ev, self.z, self.alpha, self.k, self.phase, self.win = ev, z, alpha, horizon, 0, -1

    def advance(self) -> bool:
        if self.ev.pending():
            return True
        if self.phase < 2:
            every = torch.arange(len(self.z))
            self.ev.want(every, torch.full_like(every, 1 if self.phase == 0 else self.k))
            self.phase += 1
            if self.ev.pending():
                return True
        depth, partial = self.ev.results(torch.arange(len(self.z)))
        s = score(self.z, self.alpha, partial)
        self.win = int(torch.argmax(s))        # first maximum: candidates are in ascending id order
        return False

    def winners(self):
        return torch.tensor([self.win])


@dataclass
class _Step:
    ids: torch.Tensor              # survivors, ascending id
    z: torch.Tensor                # their perturbed scores
    ev: RequestEvaluator
    search: object


@dataclass
class ServingOutput:
    """What ``EpicServingDecoder.generate`` returns."""

    new_tokens: list                          # per prompt, the generated ids (EOS included)
    finish_reasons: list                      # "eos" | "length"
    steps: list                               # per prompt, its StepRecords
    rounds: int = 0                           # engine rounds of the whole batch
    seconds: float = 0.0
    engine_seconds: float = 0.0               # inside the transport (engine steps + request overhead)
    texts: list = field(default_factory=list)

    def summary(self) -> dict:
        recs = [r for seq in self.steps for r in seq]
        n = max(len(recs), 1)
        tot = lambda a: sum(getattr(r, a) for r in recs)
        tokens = sum(len(t) for t in self.new_tokens)
        return dict(tokens=tokens, seconds=self.seconds, tokens_per_second=tokens / self.seconds if self.seconds else 0.0,
                    rounds=self.rounds, batch_rounds_per_token=self.rounds / max(tokens, 1) * len(self.new_tokens),
                    rounds_per_token=tot("rounds") / n, requests_per_token=tot("requests") / n,
                    generated_per_token=tot("generated") / n, prompt_tokens_per_token=tot("prompt_tokens") / n,
                    cached_fraction=tot("cached_tokens") / max(tot("prompt_tokens"), 1),
                    mean_survivors=tot("survivors") / n, mean_evaluated=tot("evaluated") / n,
                    engine_seconds=self.engine_seconds, library_seconds=self.seconds - self.engine_seconds)


class EpicServingDecoder:
    """Exact EPIC decoding whose model calls all go through a serving-engine ``Transport``.

    The configuration is checked against the engine before anything is sent: candidates and the
    rollout policy must be truncated (``top_k``, ``rollout_top_k`` <= the engine's ``max_logprobs``;
    full-vocabulary EPIC is out of scope on a serving engine), prefix caching must be on, logprobs
    must be raw (log q over the full vocabulary). One probe request then checks the engine answers.
    """

    def __init__(self, transport, *, alpha: float = defaults.ALPHA, horizon: int = defaults.HORIZON,
                 rollouts: int = defaults.ROLLOUTS, top_k: int | None = defaults.TOP_K,
                 rollout_top_k: int | None = defaults.ROLLOUT_TOP_K, block_size: int = defaults.BLOCK_SIZE,
                 refine: str = "eager", eager_max: int = 8, backend: str | None = None, probe: bool = True):
        if top_k is None or rollout_top_k is None:
            which = "top_k" if top_k is None else "rollout_top_k"
            raise ServingError(f"{which}=None asks for full-vocabulary EPIC, which is out of scope on a serving "
                               "engine: its logprobs return at most max_logprobs tokens per position, so candidates "
                               "and the rollout policy must be truncated (top_k, rollout_top_k <= max_logprobs)")
        self.cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                              block_size=block_size)
        check_config(self.cfg)
        check_int(top_k, "top_k", 1)
        self.top_k = int(top_k)
        self.refine = Refinement(refine, eager_max)
        info: EngineInfo = transport.info
        self.L = max(self.top_k, int(rollout_top_k))
        if self.L > info.max_logprobs:
            raise ServingError(f"top_k={top_k} / rollout_top_k={rollout_top_k} need {self.L} logprobs per position, "
                               f"above the engine's max_logprobs={info.max_logprobs}: start it with "
                               f"max_logprobs={self.L} (vllm serve --max-logprobs {self.L}) or lower them")
        if self.L >= info.vocab_size:
            raise ServingError(f"top_k / rollout_top_k ({self.L}) must be below the vocabulary size ({info.vocab_size})")
        if info.prefix_caching is False:
            raise ServingError("prefix caching is off in the engine: EPIC sends the prefix with every candidate's "
                               "request and relies on the engine's prefix cache to not recompute it; start it with "
                               "enable_prefix_caching=True (vllm serve --enable-prefix-caching)")
        if info.raw_logprobs is False:
            raise ServingError("the engine's logprobs are not raw (logprobs_mode != 'raw_logprobs'): EPIC needs "
                               "log q over the full vocabulary, before the sampler's top-k")
        self.transport, self.info = transport, info
        self.backend = choose(torch.device("cpu"), backend)
        self.bound = admissible_bound(info.vocab_size, rollout_top_k)
        self.width = window(alpha, horizon, info.vocab_size, rollout_top_k)
        if probe:
            self._probe()

    def _probe(self) -> None:
        """One tiny request: the engine answers, accepts L logprobs, and returns them raw (a top-1
        sampler leaves the other logprobs finite only in raw mode)."""
        token = (self.info.eos_token_ids or [0])[0]
        res = self.transport.generate([Request((token,), 1, self.L, n=1, seed=0, top_k=1)])
        vals = res[0].samples[0].values[0]
        if len(vals) < min(self.L, 2) or not bool((vals[1:] > -1e3).any()):
            raise ServingError("the engine's logprobs are not raw (a top_k=1 request returned no finite logprob "
                               "besides the sampled token): EPIC needs log q over the full vocabulary "
                               "(vLLM's default logprobs_mode='raw_logprobs')")

    # -- one sequence's progress between rounds -------------------------------------------------
    def _start_steps(self, seqs) -> None:
        """Prune every sequence's root candidates (one op call for all of them) and start its search."""
        V = self.info.vocab_size
        logits = torch.full((len(seqs), V), float("-inf"), dtype=torch.float32)
        for i, s in enumerate(seqs):
            logits[i, s.root.ids[: self.top_k]] = s.root.values[: self.top_k]
        seeds = torch.tensor([s.seed for s in seqs], dtype=torch.int64)
        positions = torch.tensor([s.position for s in seqs], dtype=torch.int64)
        width = math.inf if self.exhaustive else self.width
        pr = gumbel_topk_prune_impl(logits, seeds, positions, width, 1, self.backend)
        for i, s in enumerate(seqs):
            lo, hi = int(pr.offsets[i]), int(pr.offsets[i + 1])
            ids, z = pr.ids[lo:hi].clone(), pr.scores[lo:hi].clone()
            ev = RequestEvaluator(s.prefix, ids, self.cfg, self.L, s.seed, s.position, self.refine, self.backend)
            if self.exhaustive:
                search = _Exhaustive(ev, z, self.cfg.alpha, self.cfg.horizon)
            else:
                mgr = _manager(ids, z, self.cfg.alpha, self.cfg.horizon, self.bound, self.cfg.block_size, self.backend)
                search = Search(mgr, ev, z, self.cfg.alpha)
            s.step = _Step(ids, z, ev, search)

    def _finish_step(self, s: SequenceState) -> None:
        st = s.step
        m = int(st.search.winners()[0])
        token = int(st.ids[m])
        ev = st.ev
        depth = int(ev.depth[m])
        entropy = float(rb_estimate(ev.table[m:m + 1], depth)[0]) if depth else float("nan")
        trace = None
        if self.trace:
            every = torch.arange(len(st.ids))
            known, partial = ev.results(every)
            trace = dict(ids=st.ids.tolist(), z=st.z.tolist(), depth=known.tolist(), partial=partial.tolist(),
                         table=ev.table.tolist(), paths=list(ev.paths), winner=m, position=s.position,
                         root_ids=s.root.ids.tolist(), root_values=s.root.values.tolist())
        s.steps.append(StepRecord(token, len(st.ids), int(ev.requested.sum()), ev.depth.tolist(),
                                  entropy=entropy, trace=trace, **s.take_costs()))
        s.tokens.append(token)
        s.root = ev.next_root.get(m)
        s.step = None
        if token in s.eos:
            s.done, s.finish_reason = True, "eos"
        elif len(s.tokens) >= s.max_new_tokens:
            s.done, s.finish_reason = True, "length"

    def _plan(self, seqs) -> list:
        """Advance every sequence as far as it goes without the engine; return the round's work as
        ``(sequence, candidate or None, depth, Request)``."""
        work = []
        while True:
            starting = [s for s in seqs if not s.done and s.step is None and s.root is not None]
            if starting:
                self._start_steps(starting)
            progressed = False
            for s in seqs:
                if s.done or s.step is None:
                    continue
                if s.step.search.advance():
                    continue
                self._finish_step(s)
                progressed = True
            if not progressed:
                break
        for s in seqs:
            if s.done:
                continue
            if s.root is None:
                work.append((s, None, 1, Request(s.prefix, 1, self.L)))
            else:
                work += [(s, m, d, req) for m, d, req in s.step.ev.plan()]
        return work

    # -- the decode -----------------------------------------------------------------------------
    trace = exhaustive = False
    engine_seconds = 0.0

    def begin(self, prompts, seed=0, max_new_tokens: int = 64, eos_token_id="default", first_index: int = 0) -> list:
        """Validated ``SequenceState`` s for ``prompts`` (token-id lists), indexed from ``first_index``;
        ``round`` advances them (``generate``; a server admits sequences between rounds)."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ServingError("prompts must be a non-empty list of token-id lists")
        for p in prompts:
            if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, int) and 0 <= t < self.info.vocab_size
                                                                     for t in p):
                raise ServingError(f"each prompt must be a non-empty list of token ids in [0, {self.info.vocab_size})")
        check_int(max_new_tokens, "max_new_tokens", 0)
        seeds = check_seeds(seed, len(prompts)).tolist()
        if eos_token_id == "default":
            eos = frozenset(self.info.eos_token_ids)
        elif eos_token_id is None:
            eos = frozenset()
        else:
            eos = frozenset([eos_token_id] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id])
        seqs = [SequenceState(first_index + b, list(p), int(sd), max_new_tokens, eos)
                for b, (p, sd) in enumerate(zip(prompts, seeds))]
        for s in seqs:
            s.done = max_new_tokens == 0
        return seqs

    @torch.no_grad()
    def round(self, seqs) -> bool:
        """One engine round for ``seqs``: advance every search as far as it goes without the engine
        (finishing steps, so tokens may be appended), send what they need next as one batch, give the
        responses back. False when nothing was left to send (every sequence done)."""
        work = self._plan(seqs)
        if not work:
            return False
        t = time.perf_counter()
        responses = self.transport.generate([w[3] for w in work])
        self.engine_seconds += time.perf_counter() - t
        touched = set()
        for (s, m, d, req), res in zip(work, responses):
            s.charge(req, res)
            touched.add(id(s))
            if m is None:
                s.root = Root(res.samples[0].ids[0], res.samples[0].values[0])
            else:
                s.step.ev.absorb(m, d, res)
        for s in seqs:
            if id(s) in touched:
                s.rounds += 1
        return True

    @torch.no_grad()
    def generate(self, prompts, *, max_new_tokens: int = 64, seed=0, eos_token_id="default",
                 trace: bool = False, exhaustive: bool = False, progress=None) -> ServingOutput:
        """Decode up to ``max_new_tokens`` per prompt (lists of token ids).

        seed : int (prompt b uses ``seed + b``) or one int per prompt: the per-sequence keys.
        eos_token_id : int, list, None (run to max_new_tokens), or "default" (the engine's EOS ids).
        trace : keep each step's candidates, scores, depths, estimates and rollout tokens.
        exhaustive : evaluate every candidate to the full horizon (the oracle; for tests).
        progress : print a progress line to stderr every round (default: when more than 50 rounds).
        """
        self.trace, self.exhaustive = trace, exhaustive
        seqs = self.begin(prompts, seed, max_new_tokens, eos_token_id)
        start, rounds = time.perf_counter(), 0
        self.engine_seconds = 0.0
        while self.round(seqs):
            rounds += 1
            if progress or (progress is None and rounds % 50 == 0):
                done = sum(len(s.tokens) for s in seqs)
                print(f"[epic-vllm] round {rounds}: {done} tokens, {sum(not s.done for s in seqs)} sequences active, "
                      f"{time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        engine_s = self.engine_seconds
        out = ServingOutput([s.tokens for s in seqs], [s.finish_reason for s in seqs], [s.steps for s in seqs],
                            rounds, time.perf_counter() - start, engine_s)
        tok = self.info.tokenizer
        if tok is not None:
            out.texts = [tok.decode(t, skip_special_tokens=True) for t in out.new_tokens]
        return out


__all__ = ["EpicServingDecoder", "ServingOutput"]
