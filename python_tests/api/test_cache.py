"""EpicCache: appends without copying the prefix, forks share storage without seeing each other's
tokens, and a model run over it gives the logits it gives over transformers' DynamicCache."""
import torch

import epic_kernels
from epic_kernels import cache as cache_mod
from epic_kernels.cache import EpicCache
from epic_kernels.testing import prefill, random_prompts


def _layers(c):
    return [(layer.keys.clone(), layer.values.clone()) for layer in c.layers]


def test_model_over_epic_cache_equals_dynamic_cache(tiny):
    ids = torch.tensor([random_prompts(32, [9], seed=3)[0]])
    plain = tiny(input_ids=ids, use_cache=True)
    ours = tiny(input_ids=ids, past_key_values=EpicCache(), use_cache=True)
    assert isinstance(ours.past_key_values, EpicCache)
    assert torch.equal(plain.logits, ours.logits)
    nxt = torch.tensor([[5]])
    a = tiny(input_ids=nxt, past_key_values=plain.past_key_values, use_cache=True)
    b = tiny(input_ids=nxt, past_key_values=ours.past_key_values, use_cache=True)
    assert torch.equal(a.logits, b.logits)
    for (k, v), layer in zip(_layers(a.past_key_values), b.past_key_values.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


def test_fork_appends_beyond_the_original_without_changing_it():
    k = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    base = EpicCache.from_layers([(k, v)])
    fork = base.fork()
    nk, nv = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    fork.append([nk], [nv])
    assert base.get_seq_length() == 5 and fork.get_seq_length() == 6
    assert torch.equal(base.layers[0].keys, k)
    assert torch.equal(fork.layers[0].keys[:, :, 5], nk)
    # same storage: the fork copied nothing
    assert fork.layers[0]._storage is base.layers[0]._storage
    # a second branch from the old cache copies itself first (copy-on-write): no one sees the other
    other = base.fork()
    ok = torch.full_like(nk, 7.0)
    other.append([ok], [ok])
    assert other.layers[0]._storage is not base.layers[0]._storage
    assert torch.equal(fork.layers[0].keys[:, :, 5], nk)
    assert torch.equal(other.layers[0].keys[:, :, 5], ok)
    assert torch.equal(other.layers[0].keys[:, :, :5], k)


def test_appended_equals_fork_then_append_on_every_path():
    """``appended`` (one pass, what a decoding step uses) gives what ``fork()`` + ``append`` give: in
    place when the storage has room, growing when it is full, copy-on-write when another fork wrote
    beyond this cache, and on an empty layer; the original cache never changes."""
    torch.manual_seed(0)
    layers = [(torch.randn(2, 3, L, 4), torch.randn(2, 3, L, 4)) for L in (5, 16, 7)]

    def make():
        c = EpicCache.from_layers(layers)
        c.layers[1]._storage = cache_mod._Storage.holding(*layers[1], 16)   # full: must grow
        c.layers.append(cache_mod.EpicLayer())                               # never initialized
        return c

    keys = [torch.randn(2, 3, 4) for _ in range(4)]
    values = [torch.randn(2, 3, 4) for _ in range(4)]
    for written in (False, True):      # True: another fork already wrote beyond the cache
        base, ref = make(), make()
        if written:
            base.fork().append(keys[::-1], values[::-1])
        want = ref.fork()
        want.append(keys, values)
        got = base.appended(keys, values)
        shared = got.layers[0]._storage is base.layers[0]._storage
        assert shared != written                            # in place, or copy-on-write
        assert got.version != base.version and got.get_seq_length() == 6
        for a, b in zip(want.layers, got.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert base.get_seq_length() == 5
        for (k, v), layer in zip(layers, base.layers):
            assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_version_changes_on_every_mutation():
    c = EpicCache.from_layers([(torch.zeros(2, 1, 3, 2), torch.zeros(2, 1, 3, 2))])
    seen = {c.version}
    c.append([torch.ones(2, 1, 2)], [torch.ones(2, 1, 2)])
    seen.add(c.version)
    c.batch_select_indices(torch.tensor([1]))
    seen.add(c.version)
    c.crop(-1)
    seen.add(c.version)
    assert len(seen) == 4 and c.get_seq_length() == 3 and c.layers[0].keys.shape[0] == 1


def test_a_long_sample_step_loop_never_copies_the_prefix(tiny, monkeypatch):
    """200 steps of a user's loop: the storage is reallocated only when it doubles (O(log L) copies
    over the decode, not one per token), and the caller's own cache is never modified."""
    allocations = []
    real = cache_mod._Storage.holding.__func__

    def counting(cls, keys, values, capacity):
        allocations.append((keys.shape[2], capacity))
        return real(cls, keys, values, capacity)

    monkeypatch.setattr(cache_mod._Storage, "holding", classmethod(counting))
    logits, kv, mask = prefill(tiny, random_prompts(32, [6, 4], seed=2))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in kv.layers]
    kw = dict(alpha=0.4, horizon=2, rollouts=2, top_k=6, rollout_top_k=6, seed=[1, 2])
    step = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, **kw)
    storages = set()
    for _ in range(199):
        step = epic_kernels.sample_step(step.next_logits, step.kv, tiny, attention_mask=step.attention_mask,
                                        prefetched=step.prefetched, **kw)
        assert isinstance(step.kv, EpicCache)
        storages.add(id(step.kv.layers[0]._storage))
    assert step.kv.get_seq_length() == 6 + 200
    assert len(storages) <= 6                     # one storage per doubling, shared by every step
    n_layers = len(kv.layers)
    # the first copy of the caller's cache, then one reallocation per doubling: 12 -> 24 -> ... -> 384
    growths = [a for a in allocations if a[0] > 0]
    assert len(allocations) <= n_layers * 7, allocations
    assert all(cap >= 2 * length for length, cap in growths)
    for layer, (k, v) in zip(kv.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
