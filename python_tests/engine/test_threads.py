"""Fork attention changes no model state another thread can see.

The fast engine routes its own model calls through fork attention. Several threads running EPIC on
one model object, and threads running plain forwards beside them, must each get their
single-threaded results, and a failure inside a fork call must leave the model as it was.

Each test forces the interleaving that broke the shared-config design (a thread inside a fork call
while another thread enters or leaves one) with a hook around the fork-attention op, so the tests
are deterministic; every wait is bounded.
"""
import threading

import pytest
import torch

import epic_kernels
from epic_kernels.engine import attention
from epic_kernels.testing import left_padded, random_prompts, tiny_llama

WAIT = 20.0                  # seconds: a hook never waits longer (a broken interleaving fails, not hangs)
KW = dict(alpha=1.0, horizon=2, rollouts=2, top_k=None, rollout_top_k=None, engine="fast")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(32, seed=1)


@pytest.fixture(scope="module")
def inputs():
    ids, mask = left_padded(random_prompts(32, [6, 4], seed=2))
    return ids, mask


def _generate(model, inputs, seed):
    ids, mask = inputs
    return epic_kernels.generate(model, ids, attention_mask=mask, max_new_tokens=3, seed=seed, **KW).sequences


def _plain(model, inputs):
    ids, mask = inputs
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _run(threads):
    """Start the threads, join them (bounded); return each one's result or exception."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
        assert not t.is_alive(), "a thread did not finish"


class Worker(threading.Thread):
    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as err:          # reported by the test
            self.error = err


def _hook(monkeypatch, on_call):
    """Call ``on_call(n)`` before the n-th fork-attention layer call of each thread (n = 0, 1, ...)."""
    real = attention.fork_attention_impl
    count = threading.local()

    def wrapped(*args, **kwargs):
        n = getattr(count, "n", 0)
        count.n = n + 1
        on_call(n)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "fork_attention_impl", wrapped)


def test_epic_in_several_threads_equals_single_threaded(model, inputs, monkeypatch):
    """N threads decode on one model at once: each gets its single-threaded tokens, and the model's
    attention implementation is what it was. Thread 0 enters a fork call first; the hook holds every
    thread inside its first fork call until all are inside one, then lets thread 0 finish its whole
    decode while the others wait there (with a shared config switch, thread 0 leaving fork mode sent
    the others' remaining layers through the model's own attention)."""
    n = 3
    seeds = [11, 12, 13]
    want = [_generate(model, inputs, s) for s in seeds]
    before = model.config._attn_implementation
    inside = threading.Barrier(n, timeout=WAIT)
    first_inside, first_done = threading.Event(), threading.Event()
    names = {}

    def on_call(k):
        if k == 0:
            if names[threading.get_ident()] == 0:
                first_inside.set()
            inside.wait()
            if names[threading.get_ident()] != 0:
                first_done.wait(WAIT)

    _hook(monkeypatch, on_call)

    def job(i):
        def run():
            names[threading.get_ident()] = i
            if i != 0:
                first_inside.wait(WAIT)
            try:
                return _generate(model, inputs, seeds[i])
            finally:
                if i == 0:
                    first_done.set()
        return run

    workers = [Worker(job(i)) for i in range(n)]
    _run(workers)
    for i, w in enumerate(workers):
        assert w.error is None, f"thread {i}: {type(w.error).__name__}: {w.error}"
        assert torch.equal(w.result, want[i])
    assert model.config._attn_implementation == before
    monkeypatch.undo()
    for i in range(n):                            # and the model still decodes as before
        assert torch.equal(_generate(model, inputs, seeds[i]), want[i])


def test_plain_forwards_beside_epic_get_their_own_logits(model, inputs, monkeypatch):
    """While EPIC threads are inside fork calls, another thread's plain forwards return exactly the
    single-threaded logits (the hook runs one plain forward in a second thread during every fork
    layer call of the first decode, and waits for it)."""
    want = _plain(model, inputs)
    tokens = _generate(model, inputs, 5)
    got, errors = [], []
    main = threading.get_ident()

    def plain():
        try:
            got.append(_plain(model, inputs))
        except BaseException as err:
            errors.append(err)

    def on_call(k):
        if threading.get_ident() == main_epic[0] and k < 6:
            t = threading.Thread(target=plain, daemon=True)
            t.start()
            t.join(WAIT)

    main_epic = [None]
    _hook(monkeypatch, on_call)

    def epic():
        main_epic[0] = threading.get_ident()
        return _generate(model, inputs, 5)

    first = Worker(epic)
    _run([first])
    assert main != main_epic[0]
    assert first.error is None, f"{type(first.error).__name__}: {first.error}"
    assert torch.equal(first.result, tokens)
    assert not errors, f"plain forwards raised: {errors[0]!r}"
    assert len(got) == 6 and all(torch.equal(g, want) for g in got)
    monkeypatch.undo()
    # free-running: two EPIC threads and a plain-forward thread at the same time
    stop = threading.Event()
    plain_results, plain_errors = [], []

    def plain_loop():
        while not stop.is_set() and len(plain_results) + len(plain_errors) < 200:
            try:
                plain_results.append(torch.equal(_plain(model, inputs), want))
            except BaseException as err:
                plain_errors.append(err)

    looper = threading.Thread(target=plain_loop, daemon=True)
    looper.start()
    workers = [Worker(lambda: _generate(model, inputs, 5)) for _ in range(2)]
    _run(workers)
    stop.set()
    looper.join(WAIT)
    for w in workers:
        assert w.error is None, f"{type(w.error).__name__}: {w.error}"
        assert torch.equal(w.result, tokens)
    assert not plain_errors, f"{len(plain_errors)} plain forwards raised, e.g. {plain_errors[0]!r}"
    assert plain_results and all(plain_results)


def test_a_failing_fork_call_leaves_the_model_unchanged(model, inputs, monkeypatch):
    """A fork call that raises (injected) while another thread is inside its own fork call: both
    calls end, and the model's attention implementation and plain forward outputs are unchanged
    (with a shared config switch the second thread had saved 'epic_fork' as the value to restore)."""
    want_logits = _plain(model, inputs)
    want_tokens = _generate(model, inputs, 7)
    before = model.config._attn_implementation
    a_inside, b_inside = threading.Event(), threading.Event()
    role = {}

    def on_call(k):
        who = role.get(threading.get_ident())
        if who == "a" and k == 0:
            a_inside.set()
            if not b_inside.wait(WAIT):
                raise AssertionError("thread b never entered a fork call")
            raise RuntimeError("injected failure inside a fork call")
        if who == "b" and k == 0:
            if not a_inside.wait(WAIT):
                raise AssertionError("thread a never entered a fork call")
            b_inside.set()

    _hook(monkeypatch, on_call)

    def job(name, seed):
        def run():
            role[threading.get_ident()] = name
            if name == "b":
                a_inside.wait(WAIT)               # enter fork mode only once a is inside its call
            return _generate(model, inputs, seed)
        return run

    a, b = Worker(job("a", 7)), Worker(job("b", 7))
    _run([a, b])
    assert isinstance(a.error, RuntimeError) and "injected failure" in str(a.error)
    assert b.error is None, f"{type(b.error).__name__}: {b.error}"
    assert torch.equal(b.result, want_tokens)
    assert model.config._attn_implementation == before
    monkeypatch.undo()
    assert torch.equal(_plain(model, inputs), want_logits)
    assert torch.equal(_generate(model, inputs, 7), want_tokens)


def test_a_failing_fork_call_in_one_thread(model, inputs, monkeypatch):
    """The single-threaded case: an exception inside a fork call propagates and changes nothing."""
    want_logits = _plain(model, inputs)
    before = model.config._attn_implementation

    def on_call(k):
        if k == 1:
            raise RuntimeError("injected failure inside a fork call")

    _hook(monkeypatch, on_call)
    with pytest.raises(RuntimeError, match="injected failure"):
        _generate(model, inputs, 3)
    assert model.config._attn_implementation == before
    assert torch.equal(_plain(model, inputs), want_logits)


def test_fork_attention_outside_a_fork_call_is_a_clear_error(model):
    """Calling the registered attention function with no fork call in flight in this thread names
    the problem instead of failing on a missing attribute."""
    q = torch.zeros(1, 4, 1, 8, dtype=torch.float64)
    layer = model.model.layers[0].self_attn
    with pytest.raises(RuntimeError, match="outside the fast engine"):
        attention.fork_attention(layer, q, q[:, :2], q[:, :2])
