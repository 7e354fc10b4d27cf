"""The service's engine thread: continuous batching of requests over ``batch.DecodeBatch``.

One thread owns the model. Requests wait in a bounded queue; at each step boundary the thread admits
waiting requests while fewer than ``max_running`` sequences run (each is prefilled on its own and
joins the running batch of its EPIC settings), runs one step of one batch (batches of different
settings take turns), hands each sequence its token, and removes the sequences that finished (end
of sequence, ``max_tokens``, a stop string), whose client went away, or whose time ran out. A
sequence's tokens are those it gets alone with the same seed (the library's batch invariance), so
joining, leaving and turn-taking change no one's text.

Faults: a step that raises is retried with its sequences apart (each in a batch of its own; the
batch is unchanged by a failed step), so an error fails only the request that causes it. Events go
to each request through its ``deliver`` callback, called on this thread.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import torch

from ..batch import DecodeBatch, SequenceError
from ..core import EpicConfig
from .detok import TextStream


class Overloaded(Exception):
    """The queue is full: answer 429 with ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server stops admitting requests (SIGTERM)."""


@dataclass(frozen=True)
class Settings:
    """What sequences must share to step together: the EPIC configuration and candidate truncation."""

    alpha: float
    horizon: int
    rollouts: int
    rollout_top_k: int | None
    top_k: int | None
    top_p: float | None

    def config(self) -> EpicConfig:
        return EpicConfig(alpha=self.alpha, horizon=self.horizon, rollouts=self.rollouts,
                          rollout_top_k=self.rollout_top_k)


@dataclass
class Token:
    text: str
    token: int
    entropy: float


@dataclass
class Finish:
    reason: str                   # "stop" | "length"
    usage: dict


@dataclass
class Fail:
    status: int                   # HTTP status: 500 engine error, 503 shutting down, 504 timeout
    message: str
    kind: str                     # OpenAI error type


@dataclass
class Job:
    """One request as the engine sees it. ``deliver(event)`` is called on the engine thread with
    ``Token``, then one ``Finish`` or ``Fail``."""

    prompt: list[int]
    settings: Settings
    seed: int
    max_tokens: int
    deliver: object
    stop: list[str] = field(default_factory=list)
    entropies: bool = False
    ignore_eos: bool = False
    timeout: float | None = None
    # engine side
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    handle: int | None = None
    generated: int = 0
    text: TextStream | None = None
    usage: dict = field(default_factory=lambda: dict(model_calls=0, rows=0, batch_size_sum=0, evaluated=0))
    entropy_list: list = field(default_factory=list)
    first_token_at: float | None = None


class Scheduler:
    """The engine thread (see the module docstring). ``metrics``: a ``service.metrics.Metrics``."""

    def __init__(self, model, tokenizer, *, metrics, engine: str = "auto", max_running: int = 16,
                 max_queue: int = 64, max_context: int, eos: list[int] = (), shutdown_timeout: float = 30.0,
                 make_batch=None):
        self.model, self.tokenizer, self.metrics, self.engine = model, tokenizer, metrics, engine
        # settings -> a new empty batch: DecodeBatch on the model by default (another engine: ServingBatch)
        self.make_batch = make_batch or self._decode_batch
        self.max_running, self.max_queue, self.max_context = max_running, max_queue, max_context
        self.eos = set(eos)
        self.shutdown_timeout = shutdown_timeout
        self.waiting: collections.deque[Job] = collections.deque()
        self.batches: list[tuple[Settings, DecodeBatch]] = []
        self.jobs: dict[int, Job] = {}            # handle -> job, for running sequences
        self.turn = 0
        self.cond = threading.Condition()
        self.draining_until: float | None = None
        self.thread = threading.Thread(target=self._loop, name="epic-engine", daemon=True)
        self.steps = 0
        self.error: BaseException | None = None

    # --- called from the server's threads -------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``Overloaded`` when the queue is full, ``ShuttingDown`` while draining."""
        with self.cond:
            if self.draining_until is not None:
                raise ShuttingDown("the server is shutting down and admits no new requests")
            if self.error is not None:
                raise ShuttingDown(f"the engine stopped ({type(self.error).__name__}: {self.error}); restart the server")
            if len(self.waiting) >= self.max_queue:
                self.metrics.requests.labels("rejected").inc()
                raise Overloaded(f"the server is at capacity ({self.max_running} running sequences and "
                                 f"{self.max_queue} queued requests); retry later", self._retry_after())
            self.waiting.append(job)
            self.metrics.waiting.set(len(self.waiting))
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: the sequence leaves at the next step boundary (or never starts)."""
        job.cancelled = True
        with self.cond:
            self.cond.notify()

    def drain(self, timeout: float | None = None) -> None:
        """Stop admitting; running and queued requests get ``timeout`` seconds to finish, then end
        with a 503 error."""
        with self.cond:
            if self.draining_until is None:
                self.draining_until = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
            self.cond.notify()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def running(self) -> int:
        return len(self.jobs)

    def _retry_after(self) -> int:
        return max(1, int(round(len(self.waiting) / max(self.max_running, 1))))

    # --- the engine thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.waiting and not self.jobs and self.draining_until is None:
                        self.cond.wait()
                    if self.draining_until is not None and not self.waiting and not self.jobs:
                        return
                    admit = []
                    while self.waiting and len(self.jobs) + len(admit) < self.max_running:
                        admit.append(self.waiting.popleft())
                    self.metrics.waiting.set(len(self.waiting))
                for job in admit:
                    self._admit(job)
                self._reap()
                if self.batches:
                    self._step()
                elif self.waiting and not admit:
                    time.sleep(0.001)
        except BaseException as err:         # a bug in the loop itself: fail everyone, say why
            self.error = err
            for job in list(self.jobs.values()) + list(self.waiting):
                self._fail(job, 500, f"the engine stopped: {type(err).__name__}: {err}", "server_error")
            raise

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self._end(job, "cancelled")
            return
        ids = torch.tensor([job.prompt], dtype=torch.int64)
        try:
            batch = next((b for s, b in self.batches if s == job.settings and len(b)), None)
            if batch is None:
                batch = self.make_batch(job.settings)
                self.batches.append((job.settings, batch))
            (job.handle,) = batch.admit(ids, torch.ones_like(ids), torch.tensor([job.seed]))
        except ValueError as err:            # the engine refuses these settings (e.g. a vLLM server's limits)
            self._fail(job, 400, f"the engine cannot run this request: {err}", "invalid_request_error")
            self._prune()
            return
        except Exception as err:             # noqa: BLE001 - this request fails, the others go on
            self._fail(job, 500, f"the engine could not start this request: {type(err).__name__}: {err}",
                       "server_error")
            self._prune()
            return
        job.text = TextStream(self.tokenizer, job.prompt[-4:], job.stop)
        self.jobs[job.handle] = job
        self.metrics.running.set(len(self.jobs))

    def _decode_batch(self, s: Settings) -> DecodeBatch:
        return DecodeBatch(self.model, s.config(), top_k=s.top_k, top_p=s.top_p, engine=self.engine,
                           max_position=self.max_context + s.horizon + 2)

    def _reap(self) -> None:
        """Remove sequences whose client went away, whose time ran out, or (draining) whose grace ended."""
        now = time.monotonic()
        late = self.draining_until is not None and now > self.draining_until
        gone = []
        for handle, job in list(self.jobs.items()):
            if job.cancelled:
                self._end(job, "cancelled")
            elif job.timeout is not None and now - job.submitted > job.timeout:
                self._fail(job, 504, f"the request ran past its timeout of {job.timeout:g} s "
                                     f"({job.generated} tokens generated)", "timeout", outcome="timeout")
            elif late:
                self._fail(job, 503, "the server shut down before this request finished", "service_unavailable",
                           outcome="shutdown")
            else:
                continue
            gone.append(handle)
        if late:
            with self.cond:
                while self.waiting:
                    self._fail(self.waiting.popleft(), 503, "the server shut down before this request started",
                               "service_unavailable", outcome="shutdown")
        if gone:
            self._remove(gone)

    def _remove(self, handles) -> None:
        for h in handles:
            self.jobs.pop(h, None)
        for _, batch in self.batches:
            batch.remove(handles)
        self._prune()
        self.metrics.running.set(len(self.jobs))

    def _prune(self) -> None:
        self.batches = [(s, b) for s, b in self.batches if len(b)]

    def _step(self) -> None:
        self.turn %= len(self.batches)
        settings, batch = self.batches[self.turn]
        self.turn += 1
        jobs = [self.jobs[h] for h in batch.handles]
        last = all(j.generated + 1 >= j.max_tokens for j in jobs)
        try:
            res = batch.step(advance=not last)
        except SequenceError as err:
            for h in err.handles:
                self._fail(self.jobs[h], 500, str(err), "server_error")
            self._remove(err.handles)
            return
        except Exception as err:             # noqa: BLE001
            if len(batch) == 1:
                self._fail(jobs[0], 500, f"the engine failed on this request: {type(err).__name__}: {err}",
                           "server_error")
                self._remove(batch.handles)
            else:                            # unchanged by the failed step: retry each sequence apart
                for h in batch.handles[1:]:
                    self.batches.append((settings, batch.take([h])))
            return
        self.steps += 1
        self.metrics.steps.inc()
        self.metrics.batch_size.observe(len(jobs))
        done = []
        now = time.monotonic()
        for i, (handle, token) in enumerate(zip(res.handles, res.tokens.tolist())):
            if handle in done:                 # (an engine that made more tokens than the sequence needs)
                continue
            job = self.jobs[handle]
            job.generated += 1
            if job.first_token_at is None:
                job.first_token_at = now
                self.metrics.ttft.observe(now - job.submitted)
            for key, value in res.costs(i).items():
                job.usage[key] += value
            job.usage["batch_size_sum"] += len(jobs)
            entropy = float(res.entropies[i])
            if job.entropies:
                job.entropy_list.append(entropy)
            eos = token in self.eos and not job.ignore_eos
            text = "" if eos else job.text.push(token)
            reason = ("stop" if eos or job.text.stopped else
                      "length" if job.generated >= job.max_tokens else None)
            if reason is not None:
                text += job.text.flush()
            job.deliver(Token(text, token, entropy))
            if reason is not None:
                self._finish(job, reason)
                done.append(handle)
        self.metrics.tokens.inc(len(res.handles))
        if done:
            self._remove(done)

    def _usage(self, job: Job) -> dict:
        u, n = job.usage, max(job.generated, 1)
        epic = dict(steps=job.generated, model_calls=u["model_calls"], rows=u["rows"],
                    model_calls_per_token=u["model_calls"] / n, rows_per_token=u["rows"] / n,
                    mean_batch_size=u["batch_size_sum"] / n, evaluated=u["evaluated"], seed=job.seed)
        if job.entropies:
            epic["entropies"] = job.entropy_list
        return dict(prompt_tokens=len(job.prompt), completion_tokens=job.generated,
                    total_tokens=len(job.prompt) + job.generated, epic=epic)

    def _finish(self, job: Job, reason: str) -> None:
        self.metrics.requests.labels("completed").inc()
        self.metrics.latency.observe(time.monotonic() - job.submitted)
        job.deliver(Finish(reason, self._usage(job)))

    def _end(self, job: Job, outcome: str) -> None:
        self.metrics.requests.labels(outcome).inc()

    def _fail(self, job: Job, status: int, message: str, kind: str, outcome: str = "failed") -> None:
        self.metrics.requests.labels(outcome).inc()
        job.deliver(Fail(status, message, kind))
